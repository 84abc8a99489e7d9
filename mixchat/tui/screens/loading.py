"""Start-up: progress while the model loads (reading the folder, tokenizer, weights, conversation)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.screen import Screen
from textual.widgets import Label, LoadingIndicator, ProgressBar


class LoadingScreen(Screen[None]):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(id="loading-box"):
            yield Label("mixchat", id="loading-title")
            yield Label(f"loading {self.what}", id="loading-what")
            with Center():
                yield ProgressBar(total=1, show_eta=False, show_percentage=False, id="loading-progress")
            yield Label("", id="loading-stage")
            yield LoadingIndicator()

    def progressed(self, stage: str, step: int, steps: int) -> None:
        self.query_one("#loading-stage", Label).update(stage)
        self.query_one(ProgressBar).update(total=steps, progress=step)
