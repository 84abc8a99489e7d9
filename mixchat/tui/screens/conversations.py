"""The conversations screen: every saved conversation, to open (with its saved cache), rename, delete,
export as Markdown or copy (fork) under a new name; a filter box keeps only those whose name or messages
contain its text.

Renames, deletions, exports, copies and the search are small file operations and run right here; opening
one needs the model (its cache is read into tensors), so the screen only returns the choice and the chat
screen opens it in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label

from mixchat.tui.keys import CONVERSATION_KEYS, bindings
from mixchat.tui.screens.dialogs import Confirm, TextPrompt


@dataclass(frozen=True)
class ConversationChoice:
    action: str  # "open" | "new" | "current-deleted" | "current-renamed"
    name: str | None = None


def local_time(iso: str) -> str:
    from mixchat.units import local_time as fmt

    return fmt(iso)


class ConversationsScreen(Screen[ConversationChoice | None]):
    BINDINGS = bindings(CONVERSATION_KEYS)

    def __init__(
        self,
        store: Any,
        current: Any,
        export_dir: Path | None = None,
        show_folder: bool = True,
        focus_filter: bool = False,
    ) -> None:
        super().__init__()
        self.focus_filter = focus_filter
        self.filter_text = ""
        self.store = store
        self.show_folder = show_folder
        self.current = current  # the open Conversation: a rename must update its in-memory name too
        self.export_dir = export_dir or Path.cwd()
        self.names: list[str] = []
        self.changed: ConversationChoice | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations-box"):
            yield Label("Conversations", classes="screen-title")
            where = f"saved in {self.store.root}" if self.show_folder else "saved in the data folder"
            yield Label(where, id="conversations-where", classes="dim")
            yield Input(placeholder="filter: text from a name or a message (/ to come here, Enter to the list)",
                        id="conversations-filter")  # fmt: skip
            yield DataTable(id="conversations-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="conversations-empty", classes="dim")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("name", "turns", "tokens", "updated", "model", "match")
        self.reload()
        if self.focus_filter:
            self.query_one("#conversations-filter", Input).focus()
        else:
            table.focus()

    def reload(self, select: str | None = None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        self.names = []
        current = getattr(self.current, "name", None)
        matches = self.matches()
        for info in self.store.list():
            if matches is not None and info.name not in matches:
                continue
            if info.error is not None:
                table.add_row(f"{info.name} (unreadable)", "", "", "", info.error[:40])
            else:
                mark = " ●" if info.name == current else ""
                table.add_row(info.name + mark, str(info.turns), f"{info.tokens:,}", local_time(info.updated),
                              info.model_name, (matches or {}).get(info.name, ""))  # fmt: skip
            self.names.append(info.name)
        empty = self.query_one("#conversations-empty", Label)
        if self.filter_text.strip():
            empty.update("" if self.names else f"no conversation mentions {self.filter_text.strip()!r}")
        else:
            empty.update("" if self.names else "no saved conversations yet: they are saved after every turn")
        if select is not None and select in self.names:
            table.move_cursor(row=self.names.index(select))

    def matches(self) -> dict[str, str] | None:
        """With a filter: name -> the first matching text of each conversation that contains it."""
        from mixchat.session.search import search

        if not self.filter_text.strip():
            return None
        out: dict[str, str] = {}
        for hit in search(self.store, self.filter_text, limit_per_conversation=1):
            out.setdefault(hit.name, hit.snippet)
        return out

    @on(Input.Changed, "#conversations-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.reload()

    @on(Input.Submitted, "#conversations-filter")
    def _filter_submitted(self) -> None:
        self.query_one(DataTable).focus()

    def action_filter(self) -> None:
        self.query_one("#conversations-filter", Input).focus()

    def selected(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.names or table.cursor_row is None or not 0 <= table.cursor_row < len(self.names):
            return None
        return self.names[table.cursor_row]

    # ---- actions ---------------------------------------------------------------------------------------
    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        name = self.selected()
        if name is not None:
            self.dismiss(ConversationChoice("open", name))

    def action_new(self) -> None:
        self.dismiss(ConversationChoice("new"))

    def action_back(self) -> None:
        self.dismiss(self.changed)

    def action_rename(self) -> None:
        from mixchat.session import ConversationError

        old = self.selected()
        if old is None:
            return

        def done(new: str | None) -> None:
            if not new or new == old:
                return
            try:
                final = self.store.rename(old, new)
            except (ConversationError, OSError) as e:
                self.notify(str(e), severity="error")
                return
            if self.current is not None and self.current.name == old:
                self.current.name = final
                self.changed = ConversationChoice("current-renamed", final)
            self.notify(f"renamed to {final!r}")
            self.reload(select=final)

        self.app.push_screen(TextPrompt(f"Rename {old!r} to", old), done)

    def action_delete(self) -> None:
        from mixchat.session import ConversationError

        name = self.selected()
        if name is None:
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.store.delete(name)
            except (ConversationError, OSError) as e:
                self.notify(str(e), severity="error")
                return
            self.notify(f"deleted {name!r}")
            if self.current is not None and self.current.name == name:
                self.changed = ConversationChoice("current-deleted", name)
            self.reload()

        self.app.push_screen(Confirm(f"Delete {name!r} and its saved cache?"), done)

    def action_fork(self) -> None:
        from mixchat.session import ConversationError
        from mixchat.session.steer import fork_saved

        name = self.selected()
        if name is None:
            return

        def done(new: str | None) -> None:
            if not new:
                return
            try:
                final = fork_saved(self.store, name, new)
            except (ConversationError, OSError) as e:
                self.notify(str(e), severity="error")
                return
            self.notify(f"copied {name!r} as {final!r}")
            self.reload(select=final)

        self.app.push_screen(TextPrompt(f"Copy {name!r} (transcript and cache) as", f"{name} (fork)"), done)

    def action_export(self) -> None:
        name = self.selected()
        if name is not None:
            export_markdown(self, self.store, name, self.export_dir)


def export_markdown(screen: Screen[Any], store: Any, name: str, folder: Path) -> None:
    """Ask where to write a Markdown export of `name` (default: FOLDER/<name>.md), then write it."""
    from mixchat.session import ConversationError
    from mixchat.session.files import slug

    def done(path: str | None) -> None:
        if not path:
            return
        target = Path(path).expanduser()
        try:
            text = store.export(name, "md")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except (ConversationError, OSError) as e:
            screen.notify(f"export failed: {e}", severity="error")
            return
        screen.notify(f"exported {name!r} to {target}")

    screen.app.push_screen(TextPrompt(f"Export {name!r} as Markdown to", str(folder / f"{slug(name)}.md")), done)
