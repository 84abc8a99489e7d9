"""Progress of a long pre-fill (a pasted document, a rebuilt cache), shown only while one runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.reactive import reactive

from mixchat.tui.widgets.cache_gauge import bar
from mixchat.tui.widgets.lines import Line, LineWidget


class PrefillBar(LineWidget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"prefill-bar--fill", "prefill-bar--empty"}

    progress: reactive[tuple[int, int]] = reactive((0, 0))

    def watch_progress(self) -> None:
        self.invalidate()

    def build(self, width: int) -> Sequence[Line]:
        done, total = self.progress
        head, tail = "pre-filling ", f" {done:,}/{total:,} tokens · Esc cancels"
        full, empty = bar(max(4, min(50, width - len(head) - len(tail) - 2)), done, total)
        return [
            [
                (head, None),
                ("▕", None),
                (full, self.style("prefill-bar--fill")),
                (empty, self.style("prefill-bar--empty")),
                ("▏", None),
                (tail, None),
            ]
        ]
