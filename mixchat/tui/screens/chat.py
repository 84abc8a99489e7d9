"""The chat screen: transcript, message box, cache gauge, routing panel, status line.

All model work runs in `@work(thread=True)` workers in one exclusive group: a turn (also a retry or an edit,
which take back the last turn first), an undo, a fork, opening a saved conversation. The UI thread only
updates widgets from the messages those workers post, so it stays responsive during a long pre-fill and the
model never sees two callers at once. Esc sets the turn's cancel event, which the engine checks between
forward passes: a stopped reply is kept as shown (the session keeps ids, text and cache consistent) and a
pre-fill cancelled part-way leaves the conversation as it was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer

from mixchat.tui.keys import CHAT_KEYS, bindings
from mixchat.tui.messages import (
    CacheChanged,
    ConversationForked,
    ConversationOpened,
    GenerationFinished,
    PrefillProgressed,
    TokensGenerated,
    TurnUndone,
)
from mixchat.tui.routing import RoutingHistory
from mixchat.tui.screens.conversations import ConversationChoice, ConversationsScreen, export_markdown
from mixchat.tui.screens.settings import SettingsResult, SettingsScreen
from mixchat.tui.streaming import TurnStreamer, cache_state
from mixchat.tui.widgets.cache_gauge import CacheGauge
from mixchat.tui.widgets.chat_input import ChatInput
from mixchat.tui.widgets.prefill_bar import PrefillBar
from mixchat.tui.widgets.routing_panel import RoutingPanel
from mixchat.tui.widgets.status_bar import StatusBar
from mixchat.tui.widgets.transcript import AssistantMessage, Transcript, UserMessage

NARROW = 100  # below this width the panel narrows
WIDE = 150  # from this width the panel widens
TINY = 64  # below this width the panel is hidden unless toggled on
PANEL_INTERVAL = 0.33  # seconds between panel repaints while tokens arrive (the transcript streams faster)
# The status line spans the whole width: Textual repaints the bounding box of everything that changed in a
# frame, so updating it with every batch would repaint the panel's rows too. Speed figures update slower.
STATUS_INTERVAL = 0.5

FINISH_NOTES = {"length": "reply stopped at the token limit", "cancelled": "reply stopped (Esc); kept as shown"}


def history_for(runtime: Any) -> RoutingHistory:
    moe = runtime.model.args.moe
    return RoutingHistory(runtime.model.args.n_layers, moe.num_experts if moe is not None else 0)


class ChatScreen(Screen[None]):
    BINDINGS = bindings(CHAT_KEYS, priority=True)

    def __init__(
        self,
        runtime: Any,
        store: Any,
        conversation: Any,
        problem: str | None = None,
        resumed: bool = False,
        panel: bool = True,
        deterministic: bool = False,
        stream_interval: float | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.store = store
        self.conversation = conversation
        self.problem = problem
        self.resumed = resumed
        self.history = history_for(runtime)
        self.panel_on = panel
        self.deterministic = deterministic
        self.stream_interval = stream_interval
        self.busy = False
        self.cancel: threading.Event | None = None
        self.reply: AssistantMessage | None = None
        self.user_widget: UserMessage | None = None
        self.sent_text = ""
        self.colour_layer: int | None = None
        self.last_finish: GenerationFinished | None = None  # for tests and scripts
        self.editing = False  # the box holds the last message to send in its place (F3)
        self.reply_tokens: list[int] = []  # routed tokens each reply added to the history, oldest first
        self._streamed = 0  # routed tokens of the reply now streaming
        self._status_shown = 0.0
        self._panel_shown = 0.0

    # ---- layout ----------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield Transcript(id="transcript")
                yield PrefillBar(id="prefill")
                yield CacheGauge(id="cache-gauge")
                yield ChatInput(id="input", placeholder="Message · Enter sends · Shift+Enter new line · F1 help")
            yield RoutingPanel(self.history, id="panel")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one(PrefillBar).display = False
        self.set_class(not self.panel_on, "-panel-off")
        moe = self.runtime.model.args.moe
        self.input.cursor_blink = not self.deterministic
        self.status.set(
            model=self.runtime.name,
            timings=not self.deterministic,
            model_experts=moe.num_experts_per_tok if moe else None,
            n_experts=moe.num_experts if moe else None,
        )
        await self.show_conversation(self.problem, self.resumed)
        self.query_one(ChatInput).focus()

    def on_unmount(self) -> None:
        """Leaving the app mid-turn: let the engine stop after its current pass instead of finishing."""
        if self.cancel is not None:
            self.cancel.set()

    def on_resize(self, event: Resize) -> None:
        width = event.size.width
        self.set_class(width < NARROW, "-narrow")
        self.set_class(width >= WIDE, "-wide")
        self.set_class(width < TINY, "-tiny")

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def transcript(self) -> Transcript:
        return self.query_one(Transcript)

    @property
    def panel(self) -> RoutingPanel:
        return self.query_one(RoutingPanel)

    @property
    def input(self) -> ChatInput:
        return self.query_one(ChatInput)

    # ---- showing a conversation -----------------------------------------------------------------------
    async def show_conversation(self, problem: str | None = None, resumed: bool = False) -> None:
        """Draw the transcript of the current conversation; new routing history, gauge, status."""
        conv = self.conversation
        t = self.transcript
        await t.clear()
        self.history = history_for(self.runtime)
        self.reply_tokens = []
        self.editing = False
        self.panel.set_history(self.history)
        if conv.settings.system:
            await t.add_note(f"system prompt: {conv.settings.system}", "system")
        for m in conv.messages:
            if m.role == "user":
                await t.add_user(m.content)
            else:
                await t.add_reply(m.content, FINISH_NOTES.get(m.finish_reason or ""))
        if resumed:
            pending = len(conv.pending)
            how = "cache restored, nothing to pre-fill" if pending <= 1 else f"{pending:,} tokens to pre-fill"
            await t.add_note(f"resumed {conv.name!r}: {conv.turns} turns, {len(conv.ids):,} tokens, {how}")
        if problem:
            await t.add_note(problem, "warning")
        self.query_one(CacheGauge).state = cache_state(conv)
        self.update_status()
        self.recolour()

    def update_status(self, **changes: Any) -> None:
        conv = self.conversation
        moe = self.runtime.model.args.moe
        k = (conv.settings.experts_per_token or moe.num_experts_per_tok) if moe is not None else None
        colouring = f"colour: L{self.colour_layer}" if self.colour_layer is not None else None
        self.status.set(conversation=conv.name or "new conversation", experts=k, colouring=colouring, **changes)

    # ---- a turn ------------------------------------------------------------------------------------------
    @on(ChatInput.Submitted)
    async def _submitted(self, event: ChatInput.Submitted) -> None:
        await self.send(event.text)

    async def send(self, text: str) -> None:
        if self.busy:
            self.notify("a reply is still running; Esc stops it", severity="warning")
            return
        start: Callable[[threading.Event], Iterator[Any]] | None = None
        if self.editing:  # F3: this text takes the place of the last message
            from mixchat.session import steer

            self.editing = False
            conv = self.conversation
            await self.take_back_last_turn(keep_user=False)
            start = lambda cancel: steer.edit(conv, text, cancel)  # noqa: E731
        self.busy = True
        self.sent_text = text
        self.input.clear()
        self.reply = None
        self.user_widget = await self.transcript.add_user(text)
        self.cancel = threading.Event()
        self.update_status(state="pre-filling", tokens_per_second=None, first_token=None)
        self.run_turn(text, self.cancel, start)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def run_turn(
        self, text: str, cancel: threading.Event, start: Callable[[threading.Event], Iterator[Any]] | None = None
    ) -> None:
        kwargs = {} if self.stream_interval is None else {"interval": self.stream_interval}
        streamer = TurnStreamer(self.conversation, self.post_message, self.store, **kwargs)
        try:
            result = streamer.run(text, cancel, start)
        except Exception as e:  # never leave the screen waiting for a turn that died
            result = GenerationFinished(None, False, f"{type(e).__name__}: {e}")
        self.post_message(result)

    def on_prefill_progressed(self, message: PrefillProgressed) -> None:
        bar = self.query_one(PrefillBar)
        if message.done < message.total and message.total > self.conversation.settings.chunk_size:
            bar.display = True
            bar.progress = (message.done, message.total)
            self.update_status(state=f"pre-filling {100 * message.done // message.total}%")
        else:
            bar.display = False

    async def on_tokens_generated(self, message: TokensGenerated) -> None:
        if self.reply is None:
            self.query_one(PrefillBar).display = False
            self.reply = await self.transcript.add_reply()
            if self.colour_layer is not None:
                self.reply.colour_by(self.colour_layer)
            self.update_status(state="writing")
        routed = [t for t in message.tokens if t.token >= 0]
        self.history.add(routed)
        self._streamed += len(routed)
        # The panel repaints at most every PANEL_INTERVAL, and in the same frame as the transcript: a
        # repaint costs about the same for one token as for ten, and a frame of its own would cost more.
        # Every millisecond the UI thread spends is taken from the model (same process, same GIL).
        now = time.monotonic()
        if self.panel_on and now - self._panel_shown >= PANEL_INTERVAL:
            self._panel_shown = now
            self.panel.refresh_routing()
        if message.first_token is not None and now - self._status_shown >= STATUS_INTERVAL:
            self._status_shown = now
            self.status.set(tokens_per_second=message.tokens_per_second, first_token=message.first_token)
        await self.reply.append(message.tokens)
        self.transcript.follow()

    def on_cache_changed(self, message: CacheChanged) -> None:
        self.query_one(CacheGauge).state = message.state

    async def on_generation_finished(self, message: GenerationFinished) -> None:
        self.busy = False
        self.cancel = None
        self.last_finish = message
        self.query_one(PrefillBar).display = False
        conv = self.conversation
        streamed, self._streamed = self._streamed, 0
        if message.replied:
            self.reply_tokens.append(streamed)
        else:
            self.history.drop_last(streamed)  # a reply that was not kept leaves no routing behind
        if message.replied:
            last = conv.messages[-1]
            if self.reply is None:
                self.reply = await self.transcript.add_reply()
            await self.reply.finish(last.content, FINISH_NOTES.get(last.finish_reason or ""))
        else:
            # Nothing was kept (cancelled during pre-fill, or failed): the turn is gone from the conversation,
            # so it goes from the screen too, and its text back into the box for editing or sending again.
            if self.user_widget is not None:
                await self.user_widget.remove()
            if self.reply is not None:
                await self.reply.remove()
            if not self.input.text:
                self.input.load_text(self.sent_text)
            if message.error is None:
                await self.transcript.add_note("cancelled before the reply: the conversation is as it was")
        if message.error is not None:
            await self.transcript.add_note(f"error: {message.error}", "error")
        if message.save_error is not None:
            # Persistent, not a toast: the turn is only in memory. It stays on screen (export it, or the next
            # turn's save tries again), and the status bar says NOT SAVED until a save succeeds.
            self.notify(message.save_error, severity="error")
            await self.transcript.add_note(
                f"not saved: {message.save_error}; the conversation is kept here, and the next save tries again",
                "error",
            )
            self.status.set(unsaved=True)
        elif message.saved_as is not None:
            self.status.set(unsaved=False)
        self.reply = None
        self.user_widget = None
        if self.panel_on:
            self.panel.refresh_routing(force=True)
        state = "ready" if message.reason != "cancelled" else "stopped"
        speed = message.tokens_per_second or self.status.status.tokens_per_second
        self.update_status(state=state, tokens_per_second=speed)

    def action_stop(self) -> None:
        if self.cancel is not None and not self.cancel.is_set():
            self.cancel.set()
            self.update_status(state="stopping")
        elif self.editing and not self.busy:
            self.editing = False
            self.input.clear()
            self.update_status(state="ready")
            self.notify("edit cancelled: the last message stays as it was")

    # ---- conversations ---------------------------------------------------------------------------------
    def _idle(self, what: str) -> bool:
        if self.busy:
            self.notify(f"a reply is running; press Esc to stop it before you {what}", severity="warning")
            return False
        return True

    async def action_new_conversation(self, system: str | bool | None = False) -> None:
        """Start a new conversation with the same settings (and, unless given, the same system prompt)."""
        from mixchat.session import Conversation

        if not self._idle("start a new conversation"):
            return
        old = self.conversation
        settings = replace(old.settings, system=old.settings.system if system is False else system)
        old.invalidate_cache()  # the buffer is reused; `old` was saved after its last turn, cache included
        self.conversation = Conversation(
            self.runtime.engine,
            self.runtime.tokenizer,
            old.fingerprint,
            settings,
            model_name=old.model_name,
            cache=old.cache,
        )
        locks = getattr(self.app, "locks", None)
        if locks is not None:
            locks.switch(self.conversation.id, "new conversation")
        await self.show_conversation()
        self.update_status(state="ready", tokens_per_second=None, first_token=None)
        self.input.focus()

    def action_conversations(self) -> None:
        if not self._idle("switch conversations"):
            return
        screen = ConversationsScreen(self.store, self.conversation, show_folder=not self.deterministic)
        self.app.push_screen(screen, self._conversation_chosen)

    async def _conversation_chosen(self, choice: ConversationChoice | None) -> None:
        if choice is None:
            return
        if choice.action == "new" or choice.action == "current-deleted":
            await self.action_new_conversation()
        elif choice.action == "open" and choice.name is not None:
            if choice.name == self.conversation.name:
                return
            self.busy = True
            self.update_status(state=f"opening {choice.name!r}")
            self.open_conversation(choice.name)
        elif choice.action == "current-renamed":
            self.update_status()

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def open_conversation(self, name: str) -> None:
        from mixchat.session import ConversationError

        try:
            locks = getattr(self.app, "locks", None)
            if locks is not None:  # another process may have it open: then this one keeps the current one
                locks.switch(self.store.read(name).id, name)
            loaded = self.store.load_for(self.runtime, name)
        except ConversationError as e:
            self.post_message(ConversationOpened(None, None, str(e)))
            return
        except Exception as e:  # e.g. out of memory: report it, keep the current conversation
            self.post_message(ConversationOpened(None, None, f"could not open {name!r}: {type(e).__name__}: {e}"))
            return
        self.post_message(ConversationOpened(loaded.conversation, loaded.problem))

    async def on_conversation_opened(self, message: ConversationOpened) -> None:
        self.busy = False
        if message.error is not None or message.conversation is None:
            self.notify(message.error or "could not open the conversation", severity="error")
            self.update_status(state="ready")
            return
        self.conversation = message.conversation
        await self.show_conversation(message.problem, resumed=True)
        self.update_status(state="ready", tokens_per_second=None, first_token=None)
        self.input.focus()

    def action_export(self) -> None:
        name = self.conversation.name
        if name is None or not self.store.exists(name):
            self.notify("nothing saved yet: a conversation is saved after its first turn", severity="warning")
            return
        export_markdown(self, self.store, name, Path.cwd())

    def action_rename(self) -> None:
        from mixchat.session import ConversationError
        from mixchat.session.files import clean_name
        from mixchat.tui.screens.dialogs import TextPrompt

        conv = self.conversation
        old = conv.name

        def done(new: str | None) -> None:
            if not new or new == old:
                return
            try:
                if old is not None and self.store.exists(old):
                    conv.name = self.store.rename(old, new)
                else:
                    conv.name = clean_name(new)  # saved under this name after its first turn
            except ConversationError as e:
                self.notify(str(e), severity="error")
                return
            self.update_status()

        self.app.push_screen(TextPrompt("Rename this conversation to", old or ""), done)

    # ---- steering: retry, undo, edit, fork, copy, $EDITOR ----------------------------------------------------
    def _has_turn(self, what: str) -> bool:
        if not self.conversation.messages:
            self.notify(f"nothing to {what}: the conversation has no turn yet", severity="warning")
            return False
        return True

    async def take_back_last_turn(self, keep_user: bool) -> None:
        """Remove the last reply (and, unless `keep_user`, its message) from the screen and its routing from
        the panel; the conversation itself is changed by the worker that follows."""
        replies = self.transcript.query(AssistantMessage)
        if replies:
            await replies.last().remove()
        users = self.transcript.query(UserMessage)
        if users and not keep_user:
            await users.last().remove()
        if self.reply_tokens:
            self.history.drop_last(self.reply_tokens.pop())
        if self.panel_on:
            self.panel.refresh_routing(force=True)

    async def action_retry(self) -> None:
        from mixchat.session import steer

        if not self._idle("retry") or not self._has_turn("retry"):
            return
        conv = self.conversation
        text = conv.messages[-2].content
        self.editing = False
        await self.take_back_last_turn(keep_user=True)
        users = self.transcript.query(UserMessage)
        self.busy = True
        self.sent_text = text
        self.reply = None
        self.user_widget = users.last() if users else await self.transcript.add_user(text)
        self.cancel = threading.Event()
        self.update_status(state="pre-filling", tokens_per_second=None, first_token=None)
        self.run_turn(text, self.cancel, lambda cancel: steer.retry(conv, cancel))

    def action_edit(self) -> None:
        if not self._idle("edit the last message") or not self._has_turn("edit"):
            return
        self.editing = True
        self.input.load_text(self.conversation.messages[-2].content)
        self.input.move_cursor(self.input.document.end)
        self.input.focus()
        self.update_status(state="editing the last message")
        self.notify("edit your last message: Enter sends it in place of the old one, Esc keeps the old one")

    def action_undo(self) -> None:
        if not self._idle("undo") or not self._has_turn("undo"):
            return
        self.busy = True
        self.editing = False
        self.cancel = threading.Event()
        self.update_status(state="undoing")
        self.undo_turn(self.cancel)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def undo_turn(self, cancel: threading.Event) -> None:
        """Take back the last turn: from the undo log (a copy of slots), else a pre-fill with progress."""
        from mixchat.session import ConversationError, steer

        conv = self.conversation
        try:
            undone = steer.undo(conv)
            if not undone.exact:  # beyond the log: rebuild now, with the usual progress bar (Esc defers it)
                for p in conv.prefill_pending(cancel):
                    self.post_message(PrefillProgressed(p.done, p.total))
        except ConversationError as e:
            self.post_message(TurnUndone("", True, str(e)))
            return
        except Exception as e:  # e.g. out of memory: the ids are intact, the next turn rebuilds the cache
            conv.invalidate_cache()
            self.post_message(TurnUndone("", False, f"{type(e).__name__}: {e}"))
            return
        self.post_message(CacheChanged(cache_state(conv)))
        save_error = None
        try:
            self.store.save(conv)
        except ConversationError as e:
            save_error = str(e)
        self.post_message(TurnUndone(undone.user_text, undone.exact, None, save_error))

    async def on_turn_undone(self, message: TurnUndone) -> None:
        self.busy = False
        self.cancel = None
        self.query_one(PrefillBar).display = False
        if message.error is not None:
            self.notify(message.error, severity="error")
            await self.show_conversation()
        else:
            await self.take_back_last_turn(keep_user=False)
            if not self.input.text.strip():
                self.input.load_text(message.user_text)
                self.input.move_cursor(self.input.document.end)
            else:
                self.notify("the undone message is not put in the box, which is not empty")
            if message.save_error is not None:
                self.notify(message.save_error, severity="error")
        self.query_one(CacheGauge).state = cache_state(self.conversation)
        self.update_status(state="ready", tokens_per_second=None, first_token=None)
        self.input.focus()

    def action_fork(self) -> None:
        from mixchat.tui.screens.dialogs import TextPrompt

        if not self._idle("fork") or not self._has_turn("fork"):
            return
        name = self.conversation.name or "conversation"

        def done(new: str | None) -> None:
            if new:
                self.busy = True
                self.update_status(state="forking")
                self.fork_conversation(new)

        self.app.push_screen(TextPrompt("Fork this conversation as", f"{name} (fork)"), done)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def fork_conversation(self, name: str) -> None:
        """Save the conversation as it is, then save it again as `name` and go on in that copy."""
        from mixchat.session import ConversationError, steer
        from mixchat.session.files import clean_name

        conv = self.conversation
        original = conv.name
        try:
            target = clean_name(name)
            if self.store.exists(target):
                raise ConversationError(f"a conversation named {target!r} already exists; choose another name")
            self.store.save(conv)
            original = conv.name
            steer.fork(conv, target, in_place=True)
            self.store.save(conv)
        except ConversationError as e:
            self.post_message(ConversationForked(original, None, str(e)))
            return
        self.post_message(ConversationForked(original, conv.name))

    async def on_conversation_forked(self, message: ConversationForked) -> None:
        self.busy = False
        if message.error is not None:
            self.notify(message.error, severity="error")
        else:
            await self.transcript.add_note(
                f"forked {message.original!r} as {message.name!r}: going on in {message.name!r}, "
                f"{message.original!r} stays saved as it was"
            )
            self.transcript.follow()
        self.update_status(state="ready")

    def action_copy(self) -> None:
        from mixchat.clipboard import code_blocks
        from mixchat.session import ConversationError, steer
        from mixchat.tui.screens.copy import CopyChoice

        try:
            reply = steer.last_reply(self.conversation).content
        except ConversationError as e:
            self.notify(str(e), severity="warning")
            return
        blocks = code_blocks(reply)
        if not blocks:
            self.copy_text(reply, "the last reply")
            return

        def done(text: str | None) -> None:
            if text is not None:
                self.copy_text(text, "the last reply" if text == reply else "the code block")

        self.app.push_screen(CopyChoice(reply, blocks), done)

    def copy_text(self, text: str, what: str) -> None:
        self.app.copy_to_clipboard(text)  # OSC 52: the terminal sets the clipboard, over ssh too
        self.notify(f"copied {what} ({len(text)} characters)")

    def action_editor(self) -> None:
        from mixchat.tui.editor import EditorError, editor_command

        try:
            new = self.run_editor(self.input.text, editor_command())
        except EditorError as e:
            self.notify(str(e), severity="error")
            return
        self.input.load_text(new)
        self.input.move_cursor(self.input.document.end)
        self.input.focus()

    def run_editor(self, text: str, command: list[str]) -> str:
        """Hand the terminal to the editor (App.suspend) and return the text it leaves in the file.

        A headless app (tests, scripts) has no terminal to hand over, so its editor runs as is.
        """
        from textual.app import SuspendNotSupported

        from mixchat.tui.editor import EditorError, edit_text

        try:
            with self.app.suspend():
                return edit_text(text, command)
        except SuspendNotSupported:
            if self.app.is_headless:
                return edit_text(text, command)
            raise EditorError("this terminal cannot be handed over to an editor") from None

    def action_search(self) -> None:
        if not self._idle("switch conversations"):
            return
        screen = ConversationsScreen(self.store, self.conversation, show_folder=not self.deterministic,
                                     focus_filter=True)  # fmt: skip
        self.app.push_screen(screen, self._conversation_chosen)

    # ---- settings ----------------------------------------------------------------------------------------
    def action_settings(self) -> None:
        moe = self.runtime.model.args.moe
        screen = SettingsScreen(
            self.conversation.settings,
            self.app.theme,
            sorted(self.app.available_themes),
            moe.num_experts if moe else None,
            moe.num_experts_per_tok if moe else None,
            bool(self.conversation.messages),
        )
        self.app.push_screen(screen, self._settings_chosen)

    async def _settings_chosen(self, result: SettingsResult | None) -> None:
        if result is None:
            return
        conv = self.conversation
        new = result.settings
        if result.theme != self.app.theme:
            self.app.theme = result.theme
        system_changed = (new.system or None) != (conv.settings.system or None)
        if system_changed and conv.messages:
            if not self._idle("change the system prompt"):
                return
            conv.settings = replace(new, system=conv.settings.system)
            await self.action_new_conversation(system=new.system)
            self.notify("the system prompt is part of the first turn: started a new conversation with it")
        else:
            conv.settings = new
            if system_changed:
                await self.show_conversation()
        self.update_status()
        if self.busy:
            self.notify("settings apply from the next reply")

    def action_experts(self, step: int) -> None:
        moe = self.runtime.model.args.moe
        if moe is None:
            self.notify("a dense model has no experts to choose", severity="warning")
            return
        settings = self.conversation.settings
        k = max(1, min(moe.num_experts, (settings.experts_per_token or moe.num_experts_per_tok) + step))
        settings.experts_per_token = None if k == moe.num_experts_per_tok else k
        self.update_status()
        when = "from the next reply" if self.busy else "for the next reply"
        self.notify(f"{k} expert{'s' if k > 1 else ''} per token {when} (model: {moe.num_experts_per_tok})")

    def action_reset_experts(self) -> None:
        self.conversation.settings.experts_per_token = None
        self.update_status()

    # ---- the panel and colouring -----------------------------------------------------------------------
    def action_toggle_panel(self) -> None:
        # From what is on screen, not from the flag: a very narrow terminal hides the panel by itself.
        self.panel_on = not (self.panel_on and self.panel.display)
        self.set_class(not self.panel_on, "-panel-off")
        self.set_class(self.panel_on, "-panel-forced")
        if self.panel_on:
            self.panel.refresh_routing(force=True)
        self.app.panel_changed(self.panel_on)  # type: ignore[attr-defined]

    def action_toggle_colouring(self) -> None:
        if not self.history.routed:
            self.notify("a dense model has no experts to colour by", severity="warning")
            return
        self.colour_layer = None if self.colour_layer is not None else self.panel.selected_layer
        self.recolour()
        self.update_status()

    def action_next_layer(self, step: int = 1) -> None:
        self.panel.action_layer(step)

    @on(RoutingPanel.SelectionChanged)
    def _layer_changed(self, event: RoutingPanel.SelectionChanged) -> None:
        if self.colour_layer is not None and event.layer != self.colour_layer:
            self.colour_layer = event.layer
            self.recolour()
            self.update_status()

    def recolour(self) -> None:
        for reply in self.transcript.replies():
            reply.colour_by(self.colour_layer)

    def repaint(self) -> None:
        """The theme changed: expert colours are drawn by hand in places, so draw them again."""
        self.panel.repaint()
        self.recolour()

    def commands(self) -> list[tuple[str, str, Any]]:
        """(title, help, callback) for the command palette: every action of this screen."""
        return [
            ("Stop the reply", "Stop generating (or cancel a pre-fill); the text so far is kept", self.action_stop),
            ("Retry the last reply", "Sample the last reply again (at temperature 0: the same)", self.action_retry),
            (
                "Undo the last turn",
                "Take back the last message and reply; the message goes back in the box",
                self.action_undo,
            ),
            ("Edit the last message", "Change your last message and send it in place of the old one", self.action_edit),
            ("Fork this conversation", "Save a copy under a new name and go on in the copy", self.action_fork),
            (
                "Copy the last reply",
                "Copy the last reply, or one of its code blocks, to the clipboard",
                self.action_copy,
            ),
            ("Write the message in $EDITOR", "Open the message box's text in your editor", self.action_editor),
            (
                "Search conversations",
                "Find text in the names and messages of all saved conversations",
                self.action_search,
            ),
            ("New conversation", "Start a new conversation with the same settings", self.action_new_conversation),
            ("Conversations", "Open, rename, delete or export saved conversations", self.action_conversations),
            ("Settings", "System prompt, sampling, chunk size, experts per token, theme", self.action_settings),
            ("Rename this conversation", "Give the open conversation a new name", self.action_rename),
            ("Export this conversation", "Write the open conversation as Markdown", self.action_export),
            ("Toggle routing panel", "Show or hide the routing panel", self.action_toggle_panel),
            (
                "Colour by expert",
                "Colour the transcript by the first expert at the selected layer",
                self.action_toggle_colouring,
            ),
            ("Next layer", "Select the next layer (colouring and detail)", lambda: self.action_next_layer(1)),
            ("Previous layer", "Select the previous layer", lambda: self.action_next_layer(-1)),
            ("More experts per token", "Route each token to one more expert", lambda: self.action_experts(1)),
            ("Fewer experts per token", "Route each token to one expert fewer", lambda: self.action_experts(-1)),
            ("Model's experts per token", "Back to the model's own number of experts", self.action_reset_experts),
            ("Help", "Key bindings and what the panel shows", self.app.action_help),  # type: ignore[attr-defined]
        ]
