"""The cache gauge: how full the rolling KV buffer is, where the conversation is, how often it wrapped."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from mixchat.tui.messages import CacheState


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class CacheGauge(Widget):
    """One line: `window ▕████░░░▏ 180/256 · pos 1,234 · wrapped 4× · 1.2 MiB`.

    The numbers come from the engine's CacheChanged events, so the bar moves with every pre-fill chunk
    and every decoded token (at the UI's update rate).
    """

    COMPONENT_CLASSES = {"cache-gauge--fill", "cache-gauge--empty", "cache-gauge--label"}

    state: reactive[CacheState | None] = reactive(None)

    def render(self) -> Text:
        s = self.state
        label = self.get_component_rich_style("cache-gauge--label")
        if s is None:
            return Text("cache: —", style=label)
        kind = "window" if s.window else "context"
        tail = f" {s.live:,}/{s.capacity:,} · pos {s.position:,}"
        if s.window:
            tail += f" · wrapped {s.wraps}×"
        tail += f" · {human_bytes(s.nbytes)}"
        bar_width = max(4, min(40, self.size.width - len(kind) - len(tail) - 3))
        filled = round(bar_width * s.live / s.capacity) if s.capacity else 0
        text = Text(kind + " ", style=label)
        text.append("▕")
        text.append("█" * filled, style=self.get_component_rich_style("cache-gauge--fill"))
        text.append("░" * (bar_width - filled), style=self.get_component_rich_style("cache-gauge--empty"))
        text.append("▏")
        text.append(tail)
        return text
