"""The cache gauge: how full the rolling KV buffer is, where the conversation is, how often it wrapped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.reactive import reactive

from mixchat.tui.messages import CacheState
from mixchat.tui.widgets.lines import Line, LineWidget
from mixchat.units import human_bytes


def bar(width: int, done: int, total: int) -> tuple[str, str]:
    filled = max(0, min(width, round(width * done / total))) if total else 0
    return "█" * filled, "░" * (width - filled)


class CacheGauge(LineWidget):
    """One line: `window ▕████░░░▏ 180/256 · pos 1,234 · wrapped 4× · 1.2 MiB`.

    The numbers come from the engine's CacheChanged events, so the bar moves with every pre-fill chunk
    and every decoded token (at the UI's update rate). For a model whose layers have windows of different
    sizes the bar is the largest layer's buffer and `smallest 12/12` the smallest layer's.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"cache-gauge--fill", "cache-gauge--empty", "cache-gauge--label"}

    state: reactive[CacheState | None] = reactive(None, always_update=True)

    def watch_state(self) -> None:
        self.invalidate()

    def build(self, width: int) -> Sequence[Line]:
        s = self.state
        label = self.style("cache-gauge--label")
        if s is None:
            return [[("cache: –", label)]]
        kind = "window" if s.window else "context"
        small = "" if s.smallest_capacity is None else f"{s.smallest_live or 0:,}/{s.smallest_capacity:,}"
        tail = f" {s.live:,}/{s.capacity:,}" + (f" · smallest layer {small}" if small else "")
        tail += f" · pos {s.position:,}"
        if s.window:
            tail += f" · wrapped {s.wraps}×"
        tail += f" · {human_bytes(s.nbytes)}"
        if width - len(kind) - len(tail) - 3 < 8:  # narrow: the numbers matter more than the words
            kind = "cache"
            tail = f" {s.live:,}/{s.capacity:,}" + (f" ({small})" if small else "") + f" @{s.position:,}"
            tail += (f" ↻{s.wraps}" if s.window else "") + f" {human_bytes(s.nbytes)}"
        full, empty = bar(max(4, min(40, width - len(kind) - len(tail) - 3)), s.live, s.capacity)
        return [
            [
                (kind + " ", label),
                ("▕", None),
                (full, self.style("cache-gauge--fill")),
                (empty, self.style("cache-gauge--empty")),
                ("▏", None),
                (tail, None),
            ]
        ]
