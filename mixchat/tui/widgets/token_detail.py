"""Detail of the selected token: its text and id, and per layer the experts it was routed to with weights."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.palette import expert_char


class TokenDetail(Widget):
    COMPONENT_CLASSES = {"token-detail--label", "token-detail--selected", "token-detail--dim"}

    def __init__(self, history: RoutingHistory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = history
        self.token: int | None = None
        self.selected_layer = 0

    def show(self, token: int | None, layer: int) -> None:
        self.token, self.selected_layer = token, layer
        self.refresh(layout=True)

    def render(self) -> Text:
        h = self.history
        label = self.get_component_rich_style("token-detail--label")
        dim = self.get_component_rich_style("token-detail--dim")
        selected = self.get_component_rich_style("token-detail--selected")
        t = h.get(self.token) if self.token is not None else None
        if t is None:
            return Text("select a token in the grid (Tab, arrows, or click)", style=dim)
        text = Text()
        text.append(f"token {self.token + 1} ", style=label)
        text.append(repr(t.label), style="bold")
        text.append(f"  id {t.token}", style=dim)
        if t.experts is None or t.weights is None:
            text.append("\nno routing for this token" if h.routed else "\ndense model: no experts", style=dim)
            return text
        colours = self.app.expert_colours  # type: ignore[attr-defined]
        for layer, (experts, weights) in enumerate(zip(t.experts, t.weights, strict=False)):
            text.append("\n")
            text.append(f"L{layer}".ljust(4), style=selected if layer == self.selected_layer else label)
            for e, w in zip(experts, weights, strict=False):
                text.append(f" {expert_char(e)} ", style=colours.cell(e, colours.weight_step(w), False))
                text.append(f" {w:.2f}  ")
        if h.counted and self.selected_layer < h.n_layers:
            share = h.share(self.selected_layer)
            text.append(f"\nL{self.selected_layer} load over {h.counted:,} tokens:", style=label)
            for e, s in enumerate(share):
                text.append(f" {expert_char(e)}", style=colours.fg(e, True))
                text.append(f" {100 * s:.0f}%")
        return text
