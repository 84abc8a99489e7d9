"""The layer × token grid: for the most recent tokens, the experts each layer routed them to.

Columns are tokens (newest at the right), rows are layers. A cell holds the chosen experts, strongest first,
each on a background shaded from the panel colour to the expert's colour by its routing weight, so the
stronger expert of a pair is both first and more saturated. The header shows the start of each token's text.

The grid follows the newest token until the user moves the cursor (←/→ tokens, ↑/↓ layers, End: follow
again, or click a cell); the selection drives the token detail below it.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.palette import expert_char

LABEL_WIDTH = 4  # "L12 "
MAX_SHOWN_EXPERTS = 4  # a cell shows at most this many experts (the detail view shows all)


class RoutingGrid(Widget, can_focus=True):
    BINDINGS = [
        Binding("left", "move(-1)", "Earlier token", show=False),
        Binding("right", "move(1)", "Later token", show=False),
        Binding("up", "layer(-1)", "Layer above", show=False),
        Binding("down", "layer(1)", "Layer below", show=False),
        Binding("home", "first", "Oldest token", show=False),
        Binding("end", "follow", "Follow the newest token", show=False),
    ]
    COMPONENT_CLASSES = {"routing-grid--label", "routing-grid--selected", "routing-grid--dim"}

    selected: reactive[int | None] = reactive(None)  # conversation-wide token index; None: the newest
    selected_layer: reactive[int] = reactive(0)

    class SelectionChanged(Message):
        def __init__(self, token: int | None, layer: int) -> None:
            super().__init__()
            self.token = token
            self.layer = layer

    def __init__(self, history: RoutingHistory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = history
        self._view: list[int] = []  # token indices of the columns last drawn
        self._cell_width = 3

    # ---- data ------------------------------------------------------------------------------------------
    def set_history(self, history: RoutingHistory) -> None:
        self.history = history
        self.selected = None
        self.selected_layer = min(self.selected_layer, max(0, history.n_layers - 1))
        self._fit_height()
        self.refresh()

    def on_mount(self) -> None:
        self._fit_height()

    def _fit_height(self) -> None:
        self.styles.height = self.history.n_layers + 1 if self.history.routed else 1

    @property
    def current(self) -> int | None:
        """The token the detail view shows: the selection, else the newest token."""
        if self.selected is not None:
            return self.selected
        return self.history.end_index - 1 if self.history.tokens else None

    def columns(self) -> int:
        return max(1, (self.size.width - LABEL_WIDTH) // self._cell_width)

    def _window(self) -> list[int]:
        """Token indices to draw, oldest first, always including the selected one."""
        h = self.history
        n = self.columns()
        end = h.end_index
        if self.selected is not None and self._view and self.selected in self._view:
            start = self._view[0]  # keep the view still while the cursor moves inside it
        elif self.selected is not None:
            start = self.selected - n + 1 if self.selected >= end - n else self.selected
        else:
            start = end - n
        start = max(h.first_index, min(start, end - n))
        return list(range(start, min(end, start + n)))

    # ---- drawing ---------------------------------------------------------------------------------------
    def render(self) -> Text:
        h = self.history
        dim = self.get_component_rich_style("routing-grid--dim")
        if not h.routed:
            return Text("no experts (dense model): every token uses the whole feed-forward layer", style=dim)
        if not h.tokens:
            return Text("routing appears here as the model writes", style=dim)
        colours = self.app.expert_colours  # type: ignore[attr-defined]
        label = self.get_component_rich_style("routing-grid--label")
        sel_style = self.get_component_rich_style("routing-grid--selected")
        shown = [h.get(i) for i in range(max(h.first_index, h.end_index - 64), h.end_index)]
        k = max((len(t.experts[0]) for t in shown if t is not None and t.experts), default=2)
        self._cell_width = min(k, MAX_SHOWN_EXPERTS) + 1
        view = self._window()
        self._view = view
        current = self.current
        lines: list[Text] = []
        head = Text(" " * LABEL_WIDTH)
        for i in view:
            t = h.get(i)
            word = (t.label.strip() or "␣") if t is not None else ""
            cell = word[: self._cell_width - 1].ljust(self._cell_width - 1) + " "
            head.append(cell, style=sel_style if i == current else dim)
        lines.append(head)
        for layer in range(h.n_layers):
            row = Text(f"L{layer}".ljust(LABEL_WIDTH), style=sel_style if layer == self.selected_layer else label)
            for i in view:
                t = h.get(i)
                if t is None or t.experts is None or layer >= len(t.experts):
                    row.append("·".ljust(self._cell_width), style=dim)
                    continue
                experts, weights = t.experts[layer], t.weights[layer] if t.weights else ()
                shown_k = min(len(experts), self._cell_width - 1)
                for j in range(shown_k):
                    w = weights[j] if j < len(weights) else 0.0
                    row.append(expert_char(experts[j]), style=colours.cell(experts[j], colours.weight_step(w), j == 0))
                row.append(" " * (self._cell_width - shown_k), style=sel_style if i == current else "")
            lines.append(row)
        return Text("\n").join(lines)

    def watch_selected(self) -> None:
        self.post_message(self.SelectionChanged(self.selected, self.selected_layer))

    def watch_selected_layer(self) -> None:
        self.post_message(self.SelectionChanged(self.selected, self.selected_layer))

    # ---- input -----------------------------------------------------------------------------------------
    def action_move(self, step: int) -> None:
        h = self.history
        if not h.tokens:
            return
        now = self.current if self.current is not None else h.end_index - 1
        target = max(h.first_index, min(h.end_index - 1, now + step))
        self.selected = None if target == h.end_index - 1 and step > 0 and self.selected is None else target

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
        if event.y >= 1 and event.y - 1 < self.history.n_layers:
            self.selected_layer = event.y - 1
        col = (event.x - LABEL_WIDTH) // self._cell_width
        if event.x >= LABEL_WIDTH and 0 <= col < len(self._view):
            self.selected = self._view[col]
