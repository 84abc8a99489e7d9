"""Detail of the selected token: its text and id, and per layer the experts it was routed to with weights."""

from __future__ import annotations

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.lines import Line
from mixchat.tui.widgets.palette import ExpertColours, expert_char
from mixchat.tui.widgets.routing_grid import PanelStyles


def detail_height(h: RoutingHistory, width: int = 40) -> int:
    """Fixed for a model and width, so the panel's size does not change while tokens stream."""
    if not h.routed:
        return 2
    per_line = max(1, width // 7)
    return 1 + h.n_layers + 1 + -(-h.n_experts // per_line)


def build_detail(
    h: RoutingHistory, token: int | None, layer: int, width: int, s: PanelStyles, colours: ExpertColours
) -> list[Line]:
    t = h.get(token) if token is not None else None
    if t is None or token is None:
        return [[("select a token: Tab to the panel, then arrows (or click the grid)", s.dim)]]
    lines: list[Line] = [[(f"token {token + 1} ", s.label), (repr(t.label), None), (f"  id {t.token}", s.dim)]]
    if t.experts is None or t.weights is None:
        lines.append([("no routing for this token" if h.routed else "dense model: no experts", s.dim)])
        return lines
    for row_layer, (experts, weights) in enumerate(zip(t.experts, t.weights, strict=False)):
        row: Line = [(f"L{row_layer}".ljust(4), s.selected if row_layer == layer else s.label)]
        for e, w in zip(experts, weights, strict=False):
            row.append((f" {expert_char(e)} ", colours.cell(e, colours.weight_step(w), False)))
            row.append((f" {w:.2f}  ", None))
        lines.append(row)
    if h.counted and layer < h.n_layers:
        lines.append([(f"L{layer} load over {h.counted:,} tokens:", s.label)])
        per_line = max(1, width // 7)
        shares = h.share(layer)
        for start in range(0, len(shares), per_line):
            row = []
            for e in range(start, min(len(shares), start + per_line)):
                row += [(expert_char(e), colours.fg(e, True)), (f" {100 * shares[e]:3.0f}% ", None)]
            lines.append(row)
    return lines
