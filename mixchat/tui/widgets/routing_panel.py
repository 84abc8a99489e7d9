"""The routing panel: grid of recent tokens × layers, expert legend, per-layer load, token detail.

It reads from one `RoutingHistory` that the chat screen feeds as tokens arrive; `refresh_routing` is called
at most once per batch of tokens, and each part repaints only when the history changed.
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label

from mixchat.tui.routing import RoutingHistory
from mixchat.tui.widgets.expert_load import ExpertLoad
from mixchat.tui.widgets.palette import expert_char
from mixchat.tui.widgets.routing_grid import RoutingGrid
from mixchat.tui.widgets.token_detail import TokenDetail

LEGEND_CLASSES = 8  # app.tcss styles .expert-0 ... .expert-7 from the theme's $expert-N variables


class ExpertLegend(Horizontal):
    """The expert colours, styled in CSS from the theme variables ($expert-0 ...)."""

    def __init__(self, n_experts: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_experts = n_experts

    def compose(self) -> ComposeResult:
        if self.n_experts:
            yield Label("experts ", classes="legend-title")
            for e in range(self.n_experts):
                yield Label(f" {expert_char(e)} ", classes=f"expert expert-{e % LEGEND_CLASSES}")


class RoutingPanel(VerticalScroll):
    def __init__(self, history: RoutingHistory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = history
        self._drawn_version = -1

    def compose(self) -> ComposeResult:
        yield Label("routing · layer × token", classes="panel-title")
        yield RoutingGrid(self.history, id="routing-grid")
        yield ExpertLegend(self.history.n_experts, id="expert-legend")
        yield ExpertLoad(self.history, id="expert-load")
        yield TokenDetail(self.history, id="token-detail")

    @property
    def grid(self) -> RoutingGrid:
        return self.query_one(RoutingGrid)

    def set_history(self, history: RoutingHistory) -> None:
        """A different conversation (or model): new history, legend rebuilt."""
        self.history = history
        self.query_one(ExpertLoad).set_history(history)
        self.query_one(TokenDetail).history = history
        self.grid.set_history(history)
        legend = self.query_one(ExpertLegend)
        if legend.n_experts != history.n_experts:
            legend.n_experts = history.n_experts
            legend.refresh(recompose=True)
        self.refresh_routing(force=True)

    def refresh_routing(self, force: bool = False) -> None:
        if not force and self.history.version == self._drawn_version:
            return
        self._drawn_version = self.history.version
        grid = self.grid
        grid.refresh()
        self.query_one(ExpertLoad).refresh()
        self.query_one(TokenDetail).show(grid.current, grid.selected_layer)

    def repaint(self) -> None:
        """Colours changed (a new theme): draw everything again."""
        for w in (self.grid, self.query_one(ExpertLoad), self.query_one(TokenDetail)):
            w.refresh()

    @on(RoutingGrid.SelectionChanged)
    def _selection(self, event: RoutingGrid.SelectionChanged) -> None:
        self.query_one(ExpertLoad).select_layer(event.layer)
        self.query_one(TokenDetail).show(self.grid.current, event.layer)
        self.grid.refresh()
