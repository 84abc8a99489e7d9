"""The layer × token grid: for the most recent tokens, the experts each layer routed them to.

Columns are tokens (newest at the right), rows are layers. A cell holds the chosen experts, strongest first,
each on a background shaded from the panel colour to the expert's colour by its routing weight, so the
stronger expert of a pair is both first and more saturated. The header shows the start of each token's text.

This module draws the grid as lines for the routing panel and maps clicks back to a token and a layer;
the panel (one widget, see routing_panel.py) owns the selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.style import Style

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.lines import Line
from mixchat.tui.widgets.palette import ExpertColours, expert_char

LABEL_WIDTH = 4  # "L12 "
MAX_SHOWN_EXPERTS = 4  # a cell shows at most this many experts (the detail shows all)


@dataclass
class PanelStyles:
    label: Style
    selected: Style
    dim: Style
    title: Style
    legend: list[Style] = field(default_factory=list)


class RoutingGridView:
    """Draws the grid and remembers which token each column showed (for clicks)."""

    def __init__(self) -> None:
        self.view: list[int] = []  # conversation-wide token index of each column last drawn
        self.cell_width = 3

    def height(self, h: RoutingHistory) -> int:
        return h.n_layers + 1 if h.routed else 1

    def window(self, h: RoutingHistory, selected: int | None, width: int) -> list[int]:
        """Token indices to draw, oldest first, always including the selected one."""
        n = max(1, (width - LABEL_WIDTH) // self.cell_width)
        end = h.end_index
        if selected is not None and selected in self.view:
            start = self.view[0]  # keep the view still while the cursor moves inside it
        elif selected is not None:
            start = selected - n + 1 if selected >= end - n else selected
        else:
            start = end - n
        start = max(h.first_index, min(start, end - n))
        return list(range(start, min(end, start + n)))

    def build(
        self,
        h: RoutingHistory,
        selected: int | None,
        current: int | None,
        layer: int,
        width: int,
        s: PanelStyles,
        colours: ExpertColours,
    ) -> list[Line]:
        if not h.routed:
            return [[("no experts (dense model): every token uses the whole feed-forward layer", s.dim)]]
        if not h.tokens:
            first: Line = [("the experts of each token appear here as the model writes", s.dim)]
            return [first] + [[] for _ in range(h.n_layers)]
        recent = (h.get(i) for i in range(max(h.first_index, h.end_index - 64), h.end_index))
        k = max((len(t.experts[0]) for t in recent if t is not None and t.experts), default=2)
        cw = self.cell_width = min(k, MAX_SHOWN_EXPERTS) + 1
        view = self.view = self.window(h, selected, width)
        head: Line = [(" " * LABEL_WIDTH, None)]
        for i in view:
            t = h.get(i)
            word = (t.label.strip() or "␣") if t is not None else ""
            head.append((word[: cw - 1].ljust(cw - 1) + " ", s.selected if i == current else s.dim))
        lines: list[Line] = [head]
        for row_layer in range(h.n_layers):
            row: Line = [(f"L{row_layer}".ljust(LABEL_WIDTH), s.selected if row_layer == layer else s.label)]
            for i in view:
                t = h.get(i)
                if t is None or t.experts is None or t.weights is None or row_layer >= len(t.experts):
                    row.append(("·".ljust(cw), s.dim))
                    continue
                experts, weights = t.experts[row_layer], t.weights[row_layer]
                shown = min(len(experts), cw - 1)
                for j in range(shown):
                    e = experts[j]
                    row.append((expert_char(e), colours.cell(e, colours.weight_step(weights[j]), j == 0)))
                row.append((" " * (cw - shown), s.selected if i == current else None))
            lines.append(row)
        return lines

    def hit(self, x: int, y: int) -> tuple[int | None, int | None]:
        """(token, layer) under a click at (x, y) relative to the grid's first line."""
        layer = y - 1 if y >= 1 else None
        col = (x - LABEL_WIDTH) // self.cell_width
        token = self.view[col] if x >= LABEL_WIDTH and 0 <= col < len(self.view) else None
        return token, layer
