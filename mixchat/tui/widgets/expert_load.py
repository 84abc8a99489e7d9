"""Per-layer expert load over the conversation: how often each expert was chosen, as coloured bars.

Each row is a layer; each column an expert, drawn as a bar whose height is that expert's share of the
layer's choices relative to the busiest expert of the layer. A balanced router shows even bars; a
router that favours a few experts shows it at a glance.
"""

from __future__ import annotations

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.lines import Line
from mixchat.tui.widgets.palette import ExpertColours, expert_char
from mixchat.tui.widgets.routing_grid import PanelStyles

BARS = " ▁▂▃▄▅▆▇█"


def load_height(h: RoutingHistory) -> int:
    return h.n_layers + 1 if h.routed else 0


def build_load(h: RoutingHistory, layer: int, width: int, s: PanelStyles, colours: ExpertColours) -> list[Line]:
    if not h.routed:
        return []
    cw = 3 if width >= 4 + 3 * h.n_experts else 2
    head: Line = [("load", s.label)]
    for e in range(h.n_experts):
        head.append((expert_char(e).rjust(cw - 1) + " ", colours.fg(e, True)))
    tail = f" {h.counted:,} tok"
    if 4 + cw * h.n_experts + len(tail) <= width:
        head.append((tail, s.dim))
    lines: list[Line] = [head]
    for row_layer in range(h.n_layers):
        row: Line = [(f"L{row_layer}".ljust(4), s.selected if row_layer == layer else s.label)]
        counts = h.counts[row_layer]
        top = max(counts) if counts else 0
        for e, c in enumerate(counts):
            level = 0 if not top else max(1 if c else 0, round(8 * c / top))
            row.append((BARS[level] * (cw - 1) + " ", colours.fg(e)))
        lines.append(row)
    return lines
