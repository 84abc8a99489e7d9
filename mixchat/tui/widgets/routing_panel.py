"""The routing panel: layer × token grid, expert legend, per-layer load, and the selected token's detail.

One scrollable line-API widget rather than a container of widgets: every layout of the screen (and the
streaming transcript causes many) walks every widget, and every repaint of a widget has a fixed cost, all on
the UI thread that shares the GIL with the model. Drawing the sections as lines of one widget, rebuilt only
when the routing history changed, keeps the panel's cost on decode speed small.

The panel follows the newest token until the user moves the cursor (←/→ tokens, ↑/↓ layers, Home, End:
follow again, or click a cell); the selection drives the detail section and the transcript colouring.
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.expert_load import build_load, load_height
from mixchat.tui.widgets.lines import Line, to_strips
from mixchat.tui.widgets.palette import expert_char
from mixchat.tui.widgets.routing_grid import PanelStyles, RoutingGridView
from mixchat.tui.widgets.token_detail import build_detail, detail_height

LEGEND_CLASSES = 8  # app.tcss colours routing-panel--e0 ... --e7 from the theme's $expert-N variables


class RoutingPanel(ScrollView, can_focus=True):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1)", "earlier token", show=False),
        Binding("right", "move(1)", "later token", show=False),
        Binding("up", "layer(-1)", "layer above", show=False),
        Binding("down", "layer(1)", "layer below", show=False),
        Binding("home", "first", "oldest token", show=False),
        Binding("end", "follow", "follow the newest token", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "routing-panel--title",
        "routing-panel--label",
        "routing-panel--selected",
        "routing-panel--dim",
        *(f"routing-panel--e{i}" for i in range(LEGEND_CLASSES)),
    }

    selected: reactive[int | None] = reactive(None, layout=False, repaint=False)  # None: follow the newest
    selected_layer: reactive[int] = reactive(0, layout=False, repaint=False)

    class SelectionChanged(Message):
        def __init__(self, token: int | None, layer: int) -> None:
            super().__init__()
            self.token = token
            self.layer = layer

    def __init__(self, history: RoutingHistory, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history = history
        self.grid = RoutingGridView()
        self._strips: list[Strip] | None = None
        self._width = -1
        self._styles: PanelStyles | None = None
        self._base: Style | None = None
        self._drawn_version = -1
        self._grid_top = 1  # line of the grid's header (after the title)
        self._load_top = 0

    # ---- what is shown -----------------------------------------------------------------------------------
    @property
    def current(self) -> int | None:
        """The token the detail shows: the selection, else the newest token."""
        if self.selected is not None:
            return self.selected
        return self.history.end_index - 1 if self.history.tokens else None

    def set_history(self, history: RoutingHistory) -> None:
        """A different conversation: new history, selection back to following the newest token."""
        self.history = history
        self.selected = None
        self.selected_layer = min(self.selected_layer, max(0, history.n_layers - 1))
        self.refresh_routing(force=True)

    def refresh_routing(self, force: bool = False) -> None:
        """Redraw if the history changed since the last drawing (called on a timer while tokens arrive).

        Only lines that differ are repainted: while tokens stream, the title, legend and most of the load
        bars stay as they are, and every repainted line has a cost on the UI thread.
        """
        if not force and self.history.version == self._drawn_version:
            return
        self._drawn_version = self.history.version
        width = self.scrollable_content_region.width
        old = self._strips
        if force or old is None or width != self._width or width <= 0:
            self._invalidate()
            return
        self._strips = None
        new = self._strips_for(width)
        if len(new) != len(old):
            self.refresh()
            return
        start: int | None = None
        for y, (a, b) in enumerate([*zip(old, new, strict=True), (None, None)]):
            same = a == b
            if not same and start is None:
                start = y
            elif same and start is not None:
                self.refresh_lines(start, y - start)
                start = None

    def repaint(self) -> None:
        """Colours changed (a new theme)."""
        self._styles = None
        self._invalidate()

    def _invalidate(self) -> None:
        self._strips = None
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None
        self._base = None
        self._strips = None

    # ---- drawing -----------------------------------------------------------------------------------------
    def panel_styles(self) -> PanelStyles:
        if self._styles is None:
            get = self.get_component_rich_style
            self._styles = PanelStyles(
                label=get("routing-panel--label"),
                selected=get("routing-panel--selected"),
                dim=get("routing-panel--dim"),
                title=get("routing-panel--title"),
                legend=[get(f"routing-panel--e{i}") for i in range(LEGEND_CLASSES)],
            )
        return self._styles

    def build(self, width: int) -> list[Line]:
        h = self.history
        s = self.panel_styles()
        colours = self.app.expert_colours  # type: ignore[attr-defined]
        layer = self.selected_layer
        lines: list[Line] = [[("routing · layer × token", s.title)]]
        self._grid_top = len(lines)
        grid = self.grid.build(h, self.selected, self.current, layer, width, s, colours)
        lines += grid + [[]] * (self.grid.height(h) - len(grid))
        if h.routed:
            lines.append([])
            cells = [(f" {expert_char(e)} ", s.legend[e % LEGEND_CLASSES]) for e in range(h.n_experts)]
            legend: Line = [("experts ", s.dim)] if width >= 8 + 3 * h.n_experts else []
            legend += cells
            lines += [legend, []]
            self._load_top = len(lines)
            lines += build_load(h, layer, width, s, colours)
        lines.append([])
        detail = build_detail(h, self.current, layer, width, s, colours)
        lines += detail + [[]] * max(0, detail_height(h, width) - len(detail))
        return lines

    def total_lines(self) -> int:
        h = self.history
        extra = 4 + load_height(h) if h.routed else 1
        return 1 + self.grid.height(h) + extra + detail_height(h, self.scrollable_content_region.width)

    def _strips_for(self, width: int) -> list[Strip]:
        if self._strips is None or self._width != width:
            if self._base is None:
                self._base = self.rich_style
            strips = to_strips(self.build(width), width, self._base)
            self._strips = strips
            self._width = width
            size = Size(width, len(strips))
            if self.virtual_size != size:
                self.virtual_size = size
        return self._strips

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        strips = self._strips_for(width)
        index = y + self.scroll_offset.y
        if 0 <= index < len(strips):
            return strips[index]
        return Strip.blank(width, self._base or self.rich_style)

    def on_mount(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, self.total_lines())

    def on_resize(self) -> None:
        self._invalidate()

    # ---- selection ---------------------------------------------------------------------------------------
    def watch_selected(self) -> None:
        self._changed()

    def watch_selected_layer(self) -> None:
        self._changed()

    def _changed(self) -> None:
        self._invalidate()
        self.post_message(self.SelectionChanged(self.selected, self.selected_layer))

    def action_move(self, step: int) -> None:
        h = self.history
        if not h.tokens:
            return
        now = self.current if self.current is not None else h.end_index - 1
        self.selected = max(h.first_index, min(h.end_index - 1, now + step))

    def action_layer(self, step: int) -> None:
        if self.history.n_layers:
            self.selected_layer = (self.selected_layer + step) % self.history.n_layers

    def action_first(self) -> None:
        if self.history.tokens:
            self.selected = self.history.first_index

    def action_follow(self) -> None:
        self.selected = None

    def on_click(self, event: events.Click) -> None:
        if not self.history.routed:
            return
        y = event.y + self.scroll_offset.y
        grid_y = y - self._grid_top
        if 0 <= grid_y < self.grid.height(self.history):
            token, layer = self.grid.hit(event.x, grid_y)
            if layer is not None and layer < self.history.n_layers:
                self.selected_layer = layer
            if token is not None:
                self.selected = token
        elif 1 <= y - self._load_top <= self.history.n_layers:
            self.selected_layer = y - self._load_top - 1
