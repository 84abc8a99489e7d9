"""The help screen: the key bindings, generated from the same table the screens bind from."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Markdown

from mixchat.tui.keys import CHAT_KEYS, CONVERSATION_KEYS, SETTINGS_KEYS, Key

INTRO = """\
**mixchat** shows how a mixture-of-experts model routes every token while it writes. The panel on the
right has a *layer × token* grid (each cell: the experts a layer chose for a token, strongest first,
shaded by routing weight), each layer's expert load over the conversation, and the detail of the selected
token. The gauge under the transcript shows the rolling cache: live tokens / window, absolute position,
how often the buffer wrapped, and its size in memory."""


def key_table(title: str, keys: tuple[Key, ...]) -> str:
    rows = [f"### {title}", "", "| Key | Action |", "|---|---|"]
    rows += [f"| {k.label} | {k.description} |" for k in keys]
    return "\n".join(rows)


def help_markdown() -> str:
    return "\n\n".join(
        [
            INTRO,
            key_table("Chat", CHAT_KEYS),
            key_table("Conversations screen", CONVERSATION_KEYS),
            key_table("Settings screen", SETTINGS_KEYS),
        ]
    )


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Label("Help · Esc closes", classes="dialog-title")
            yield Markdown(help_markdown())

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
