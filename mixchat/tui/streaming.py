"""The worker side of a turn: consume `Conversation.send()` events in a thread, post batched messages.

Why batch: a small model makes hundreds of tokens a second, and a message per token would make the UI
thread parse Markdown and repaint the panel hundreds of times a second, competing with the model for the
GIL and the CPU. Tokens are collected and posted at most every `interval` seconds (the first token at
once, so time-to-first-token shows what the user sees); cache and pre-fill events are coalesced to the
latest one. The UI thus costs about the same however fast the model is, which keeps the panel's overhead
on decode speed small.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from textual.message import Message

from mixchat.engine import CacheChanged as EngineCacheChanged
from mixchat.engine import PrefillProgressed as EnginePrefillProgressed
from mixchat.engine import SequenceFinished, TokenGenerated
from mixchat.tui.messages import CacheChanged, CacheState, GenerationFinished, PrefillProgressed, TokensGenerated
from mixchat.tui.routing import RoutedToken

if TYPE_CHECKING:
    from mixchat.cache import RollingCache
    from mixchat.session import Conversation, ConversationStore

DEFAULT_INTERVAL = 0.08  # seconds between UI updates while streaming (12.5 a second)


def cache_state(conversation: Conversation) -> CacheState:
    """The cache gauge's numbers for a conversation, read directly (e.g. right after opening it)."""
    c = conversation.cache
    return CacheState(c.live(0), c.capacity, c.seen[0], c.wraps(0), c.nbytes, c.window is not None,
                      *_smallest_layer(c, c.seen[0]))  # fmt: skip


def _smallest_layer(cache: RollingCache, seen: int) -> tuple[int | None, int | None]:
    """(live, slots) of the smallest layer's buffer when the layers' sizes differ, else (None, None)."""
    small = cache.smallest_capacity
    if small == cache.capacity:
        return None, None
    return min(seen, small), small


class TurnStreamer:
    """Runs one turn of a conversation and reports it through `post` (thread-safe `post_message`)."""

    def __init__(
        self,
        conversation: Conversation,
        post: Callable[[Message], object],
        store: ConversationStore | None = None,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.conv = conversation
        self.post = post
        self.store = store
        self.interval = interval

    def run(
        self, text: str, cancel: threading.Event, turn: Callable[[threading.Event], Iterator[Any]] | None = None
    ) -> GenerationFinished:
        """Run a turn: `conv.send(text)`, or `turn(cancel)`, a turn that first takes back the last one (a
        retry, an edit: see session/steer.py)."""
        from mixchat.cache import ContextFullError
        from mixchat.session import ConversationError, SettingsError

        conv = self.conv
        tok = conv.tokenizer
        window = conv.cache.window is not None
        start = time.perf_counter()
        batch: list[RoutedToken] = []
        cache: CacheState | None = None
        prefill: EnginePrefillProgressed | None = None
        last_post = 0.0
        n = 0
        t_first: float | None = None
        t_last = start
        reason: str | None = None
        error: str | None = None
        before = len(conv.messages) - (2 if turn is not None else 0)  # a retry or edit replaces a turn

        def speed() -> float | None:
            return (n - 1) / (t_last - t_first) if t_first is not None and n > 1 and t_last > t_first else None

        def flush() -> None:
            nonlocal batch, cache, prefill, last_post
            if prefill is not None:
                self.post(PrefillProgressed(prefill.done, prefill.total))
                prefill = None
            if batch:
                self.post(TokensGenerated(batch, speed(), None if t_first is None else t_first - start))
                batch = []
            if cache is not None:
                self.post(CacheChanged(cache))
                cache = None
            last_post = time.perf_counter()

        try:
            for ev in turn(cancel) if turn is not None else conv.send(text, cancel):
                now = time.perf_counter()
                urgent = False
                if isinstance(ev, TokenGenerated):
                    if ev.token >= 0:
                        n += 1
                        t_last = now
                        if t_first is None:
                            t_first = now
                            urgent = True
                        r = ev.routing
                        batch.append(
                            RoutedToken(
                                ev.token,
                                tok.token_text(ev.token),
                                ev.text,
                                None if r is None else tuple(tuple(e) for e in r.experts),
                                None if r is None else tuple(tuple(w) for w in r.weights),
                            )
                        )
                    elif ev.text:  # the decoder's last characters, after the final token
                        batch.append(RoutedToken(-1, "", ev.text, None, None))
                elif isinstance(ev, EngineCacheChanged):
                    cache = CacheState(ev.live, ev.capacity, ev.position, ev.wraps, ev.nbytes, window,
                                       *_smallest_layer(conv.cache, ev.position))  # fmt: skip
                elif isinstance(ev, EnginePrefillProgressed):
                    prefill = ev
                elif isinstance(ev, SequenceFinished):
                    reason = ev.reason
                if urgent or now - last_post >= self.interval:
                    flush()
        except (ContextFullError, SettingsError, ConversationError) as e:
            error = str(e)
        except Exception as e:  # a bug or an out-of-memory: report it in the app instead of killing it
            error = f"{type(e).__name__}: {e}"
        flush()
        self.post(CacheChanged(cache_state(conv)))
        saved_as = save_error = None
        if self.store is not None and conv.dirty:
            try:
                self.store.save(conv)
                saved_as = conv.name
            except ConversationError as e:
                save_error = str(e)
        replied = len(conv.messages) > before
        if replied and reason is None:
            reason = conv.messages[-1].finish_reason
        return GenerationFinished(reason, replied, error, saved_as, save_error, speed())
