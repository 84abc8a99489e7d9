"""Per-layer expert load over the conversation: how often each expert was chosen, as coloured bars.

Each row is a layer; each column an expert, drawn as a bar whose height is that expert's share of the
layer's choices relative to the busiest expert of the layer. A balanced router shows even bars; a
router that favours a few experts shows it at a glance.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.palette import expert_char

BARS = " ▁▂▃▄▅▆▇█"


class ExpertLoad(Widget):
    COMPONENT_CLASSES = {"expert-load--label", "expert-load--selected", "expert-load--dim"}

    def __init__(self, history: RoutingHistory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = history
        self.selected_layer = 0

    def set_history(self, history: RoutingHistory) -> None:
        self.history = history
        self.styles.height = history.n_layers + 1 if history.routed else 0
        self.refresh()

    def on_mount(self) -> None:
        self.set_history(self.history)

    def select_layer(self, layer: int) -> None:
        if layer != self.selected_layer:
            self.selected_layer = layer
            self.refresh()

    def render(self) -> Text:
        h = self.history
        if not h.routed:
            return Text("")
        colours = self.app.expert_colours  # type: ignore[attr-defined]
        label = self.get_component_rich_style("expert-load--label")
        dim = self.get_component_rich_style("expert-load--dim")
        selected = self.get_component_rich_style("expert-load--selected")
        width = 3 if self.size.width >= 4 + 3 * h.n_experts else 2
        head = Text("load".ljust(4), style=label)
        for e in range(h.n_experts):
            head.append(expert_char(e).rjust(width - 1) + " ", style=colours.fg(e, True))
        head.append(f" {h.counted:,} tok", style=dim)
        lines = [head]
        for layer in range(h.n_layers):
            row = Text(f"L{layer}".ljust(4), style=selected if layer == self.selected_layer else label)
            counts = h.counts[layer]
            top = max(counts) if counts else 0
            for e, c in enumerate(counts):
                level = 0 if not top else max(1 if c else 0, round(8 * c / top))
                row.append(BARS[level] * (width - 1) + " ", style=colours.fg(e))
            lines.append(row)
        return Text("\n").join(lines)
