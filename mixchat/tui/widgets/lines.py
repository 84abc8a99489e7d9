"""A base for widgets that redraw often while the model streams: they build their lines as Rich segments.

Why not `render()` returning Rich `Text`: Textual then converts every span of every line into its own
content model and re-wraps it on each repaint, which for a grid of a few hundred coloured cells costs
milliseconds per frame. That time is taken from the model (same process, same GIL), so it showed up
directly as lower decode speed. Here lines are built once per change as segments with ready-made styles,
cached, and handed to Textual as strips (Textual's "line API"), which costs next to nothing to paint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

Span = tuple[str, Style | None]  # text and its style (None: the widget's own)
Line = list[Span]


class LineWidget(Widget):
    """Subclasses implement `build(width)`; call `invalidate()` when what they show changes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._strips: list[Strip] | None = None
        self._width = -1
        self._styles: dict[str, Style] = {}  # resolved CSS styles (Textual drops its own cache on refresh)

    def build(self, width: int) -> Sequence[Line]:
        raise NotImplementedError

    def invalidate(self) -> None:
        self._strips = None
        self.refresh()

    def style(self, component: str) -> Style:
        """The Rich style of a component class, resolved once per CSS change rather than per repaint."""
        style = self._styles.get(component)
        if style is None:
            style = self._styles[component] = self.get_component_rich_style(component)
        return style

    @property
    def base_style(self) -> Style:
        style = self._styles.get("")
        if style is None:
            style = self._styles[""] = self.rich_style
        return style

    def notify_style_update(self) -> None:
        """CSS changed (theme, focus, hover): styles are resolved again at the next paint."""
        super().notify_style_update()
        self._styles.clear()
        self._strips = None

    def _strips_for(self, width: int) -> list[Strip]:
        if self._strips is None or self._width != width:
            self._strips = to_strips(self.build(width), width, self.base_style)
            self._width = width
        return self._strips

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        strips = self._strips_for(width)
        if 0 <= y < len(strips):
            return strips[y]
        return Strip.blank(width, self.base_style)


def to_strips(lines: Sequence[Line], width: int, base: Style) -> list[Strip]:
    """Lines of (text, style) runs as strips of exactly `width` cells, each run styled over `base`."""
    strips = []
    for line in lines:
        segments = [Segment(text, base + style if style is not None else base) for text, style in line]
        strips.append(Strip(segments).crop_extend(0, width, base))
    return strips
