"""Progress of a long pre-fill (a pasted document, a rebuilt cache), shown only while one runs."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class PrefillBar(Widget):
    COMPONENT_CLASSES = {"prefill-bar--fill", "prefill-bar--empty"}

    progress: reactive[tuple[int, int]] = reactive((0, 0))

    def render(self) -> Text:
        done, total = self.progress
        tail = f" {done:,}/{total:,} tokens · Esc cancels"
        head = "pre-filling "
        width = max(4, min(50, self.size.width - len(head) - len(tail) - 2))
        filled = round(width * done / total) if total else 0
        text = Text(head)
        text.append("▕")
        text.append("█" * filled, style=self.get_component_rich_style("prefill-bar--fill"))
        text.append("░" * (width - filled), style=self.get_component_rich_style("prefill-bar--empty"))
        text.append("▏")
        text.append(tail)
        return text
