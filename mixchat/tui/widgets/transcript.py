"""The conversation as it is shown: user turns, replies rendered as Markdown while they stream, notes.

Replies stream through Textual's MarkdownStream, which merges fragments when they arrive faster than the
widget can re-render. When a reply ends, its Markdown is set once more from the conversation's final text,
so what stays on screen is exactly what the conversation (and its cache) holds, also for a stopped reply.

With expert colouring on, replies that carry routing are shown as plain text where every token has the
colour of the first expert chosen for it at one layer (as in the Mixtral paper's routing figures).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Markdown, Static

from mixchat.tui.routing import RoutedToken

USER_PREVIEW = 2000  # characters of a user turn shown; a pasted document is shown in part


def preview(text: str, limit: int = USER_PREVIEW) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit:,} more characters, {text.count(chr(10)) + 1:,} lines in all)"


class UserMessage(Vertical):
    def __init__(self, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = text

    def compose(self) -> ComposeResult:
        yield Label("you", classes="role")
        yield Static(Text(preview(self.text)), classes="body")


class Note(Static):
    """A line from the app itself (resumed, stopped, errors), not part of the conversation."""


class AssistantMessage(Vertical):
    def __init__(self, content: str = "", note: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.content = content
        self.note = note
        self.pieces: list[tuple[str, tuple[int, ...] | None]] = []  # text, first expert per layer
        self._stream: Any = None
        self.colour_layer: int | None = None
        self.coloured_text: Text | None = None  # what the coloured view shows (tests read it)

    def compose(self) -> ComposeResult:
        yield Label("model", classes="role")
        yield Markdown(self.content, classes="body")
        yield Static("", classes="coloured body")
        yield Label(self.note or "", classes="reply-note")

    def on_mount(self) -> None:
        self.query_one(".reply-note").display = bool(self.note)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    @property
    def routed(self) -> bool:
        return any(first is not None for _, first in self.pieces)

    async def append(self, tokens: list[RoutedToken]) -> None:
        text = ""
        for t in tokens:
            first = tuple(e[0] for e in t.experts) if t.experts else None
            self.pieces.append((t.text, first))
            text += t.text
        if not text:
            return
        self.content += text
        if self.colour_layer is not None and self.routed:
            self._draw_coloured()
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        await self._stream.write(text)

    async def finish(self, content: str, note: str | None) -> None:
        """The reply ended: show exactly the conversation's text for it."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if content != self.content:
            self.content = content
            await self.markdown.update(content)
        self.note = note
        label = self.query_one(".reply-note", Label)
        label.update(note or "")
        label.display = bool(note)
        if self.colour_layer is not None:
            self._draw_coloured()

    def colour_by(self, layer: int | None) -> None:
        """Colour the text by the first expert at `layer`, or show Markdown again (None)."""
        self.colour_layer = layer
        on = layer is not None and self.routed
        self.set_class(on, "-coloured")
        if on:
            self._draw_coloured()

    def _draw_coloured(self) -> None:
        colours = self.app.expert_colours  # type: ignore[attr-defined]
        layer = self.colour_layer or 0
        text = Text()
        for piece, first in self.pieces:
            if first is not None and layer < len(first):
                text.append(piece, style=colours.fg(first[layer]))
            else:
                text.append(piece)
        self.coloured_text = text
        self.query_one(".coloured", Static).update(text)


class Transcript(VerticalScroll):
    """Scrolls with the reply as it grows, unless the user scrolled up to read.

    Textual's anchor also pins short content to the bottom, which leaves an empty screen above the first
    message; so the anchor is only set once the content overflows the view.
    """

    def follow(self) -> None:
        self.call_after_refresh(self._anchor_if_full)

    def _anchor_if_full(self) -> None:
        if not self.is_anchored and self.max_scroll_y > 0:
            self.anchor()

    async def add_user(self, text: str) -> UserMessage:
        w = UserMessage(text, classes="message user")
        await self.mount(w)
        self.follow()
        return w

    async def add_reply(self, content: str = "", note: str | None = None) -> AssistantMessage:
        w = AssistantMessage(content, note, classes="message assistant")
        await self.mount(w)
        self.follow()
        return w

    async def add_note(self, text: str, kind: str = "info") -> Note:
        w = Note(Text(text), classes=f"note -{kind}")
        await self.mount(w)
        self.follow()
        return w

    async def clear(self) -> None:
        self.anchor(False)
        await self.remove_children()

    def replies(self) -> list[AssistantMessage]:
        return list(self.query(AssistantMessage))
