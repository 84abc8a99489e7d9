"""Every key binding of the app in one table: the screens bind from it and the help screen (and the
README's key list, checked by a test) describe it, so what is documented is what is bound."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma-separated
    label: str  # how people write it
    description: str
    action: str | None = None  # None: handled by a widget or by Textual itself (listed for help only)
    footer: bool = False  # shown in the footer
    footer_label: str = ""


CHAT_KEYS: tuple[Key, ...] = (
    Key("enter", "Enter", "send the message"),
    Key("shift+enter,ctrl+j", "Shift+Enter, Ctrl+J", "new line in the message (pastes keep their lines)"),
    Key("escape", "Esc", "stop the reply (kept as shown) or cancel a pre-fill", "stop", True, "stop"),
    Key("f5", "F5", "retry: sample the last reply again (at temperature 0: the same reply)", "retry"),
    Key("f4", "F4", "undo the last turn: its message goes back into the box", "undo"),
    Key("f3", "F3", "edit your last message: Enter sends it in place of the old one, Esc keeps the old", "edit"),
    Key("f6", "F6", "fork: save a copy under a new name and go on in the copy", "fork"),
    Key("f9", "F9", "copy the last reply, or one of its code blocks, to the clipboard", "copy"),
    Key("f2", "F2", "write the message in $EDITOR", "editor"),
    Key("ctrl+n", "Ctrl+N", "new conversation", "new_conversation", True, "new"),
    Key("ctrl+o", "Ctrl+O", "conversations: open, rename, delete, export", "conversations", True, "chats"),
    Key(
        "ctrl+s",
        "Ctrl+S",
        "settings: system prompt, sampling, chunk size, experts per token, theme",
        "settings",
        True,
        "settings",
    ),
    Key("ctrl+r", "Ctrl+R", "show or hide the routing panel", "toggle_panel", True, "panel"),
    Key(
        "ctrl+g",
        "Ctrl+G",
        "colour the transcript by the first expert at the selected layer",
        "toggle_colouring",
        True,
        "colour",
    ),
    Key("ctrl+l", "Ctrl+L", "next layer (for the colouring and the token detail)", "next_layer"),
    Key("f7", "F7", "one expert per token fewer (from the next reply)", "experts(-1)"),
    Key("f8", "F8", "one expert per token more (from the next reply)", "experts(1)"),
    Key("ctrl+t", "Ctrl+T", "choose a theme (remembered)", "app.change_theme"),
    Key("f1", "F1", "this help", "app.help", True, "help"),
    Key("ctrl+p", "Ctrl+P", "command palette: every action by name"),
    Key("ctrl+q", "Ctrl+Q", "quit"),
    Key("tab", "Tab, Shift+Tab", "move between message box, transcript and routing panel"),
    Key("left,right,up,down", "← → ↑ ↓", "in the routing panel: choose a token and a layer (or click a cell)"),
    Key("end", "End", "in the routing panel: follow the newest token again (Home: the oldest)"),
)

CONVERSATION_KEYS: tuple[Key, ...] = (
    Key("enter", "Enter", "open the selected conversation (with its saved cache)", "open", True, "open"),
    Key("n", "N", "new conversation", "new", True, "new"),
    Key("slash", "/", "filter: only conversations whose name or messages contain the text", "filter", True, "filter"),
    Key("c", "C", "copy the selected conversation under a new name (a fork)", "fork", True, "fork"),
    Key("r", "R", "rename", "rename", True, "rename"),
    Key("d", "D", "delete (asks first)", "delete", True, "delete"),
    Key("e", "E", "export as Markdown", "export", True, "export"),
    Key("escape", "Esc", "back to the chat", "back", True, "back"),
)

SETTINGS_KEYS: tuple[Key, ...] = (
    Key("ctrl+s", "Ctrl+S", "save the settings", "save", True, "save"),
    Key("escape", "Esc", "back without saving", "cancel", True, "cancel"),
)


def bindings(keys: tuple[Key, ...], priority: bool = False) -> list[BindingType]:
    """Bindings for the keys that name an action."""
    return [
        Binding(k.keys, k.action, k.footer_label or k.description, show=k.footer, priority=priority)
        for k in keys
        if k.action is not None
    ]
