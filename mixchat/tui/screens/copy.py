"""Choose what to copy from the last reply: the whole reply or one of its code blocks."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

PREVIEW = 60


def first_line(text: str) -> str:
    line = next((s for s in text.splitlines() if s.strip()), "").strip()
    return line if len(line) <= PREVIEW else line[: PREVIEW - 1] + "…"


class CopyChoice(ModalScreen[str | None]):
    """Dismisses with the text to copy, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, reply: str, blocks: list[str]) -> None:
        super().__init__()
        self.texts = [reply, *blocks]
        self.labels = [f"the whole reply ({len(reply)} characters)"] + [
            f"code block {i}: {first_line(b) or '(empty)'}" for i, b in enumerate(blocks, 1)
        ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog small", id="copy-box"):
            yield Label("Copy to the clipboard", classes="dialog-title")
            yield OptionList(*(Option(label, id=str(i)) for i, label in enumerate(self.labels)), id="copy-options")
            yield Label("Enter copies · Esc cancels", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.texts[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
