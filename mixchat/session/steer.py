"""Steering a conversation: undo the last turn, retry its reply, edit its message, fork the conversation.

All of them keep the invariant of `Conversation` (the cache holds ids[:cache.seen[0]], the rest is pending):

- undo restores the cache from the undo log when the log leads back from the current state (a copy of
  the slots the turn overwrote, no model pass). Without a record it still goes back exactly where no live
  slot was overwritten (a buffer that never wrapped, or full attention); otherwise the cache is dropped and
  the next turn (or `prefill_pending`, with progress) rebuilds it from the ids, which are the ground truth.
- retry and edit are an undo followed by an ordinary turn, so they pre-fill only the user turn again.
- fork gives the conversation a new identity (id, name) so that saving it writes a new folder: the
  original stays as it was saved, and from then on the two share nothing, neither in memory nor on disk.

Nothing here touches files: front ends save afterwards as after any turn (atomic, the old save stays intact
until the new one is complete), so a crash mid-action loses nothing that was saved.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from mixchat.chat_template import encode_turn, reply_suffix
from mixchat.engine import Event
from mixchat.session.conversation import ChatMessage, Conversation, encode_transcript, now_iso
from mixchat.session.errors import ConversationError
from mixchat.session.files import clean_name


@dataclass(frozen=True)
class Undone:
    """What an undo took back, and how the cache went back."""

    user_text: str
    reply_text: str
    exact: bool  # the cache went back without a pre-fill (undo log, or a buffer that never wrapped)
    pending: int  # ids the next turn will pre-fill first (large when the cache must be rebuilt)


def undo(conv: Conversation) -> Undone:
    """Take back the last turn (its message and reply); ConversationError if there is none."""
    msgs = conv.messages
    if len(msgs) < 2 or msgs[-2].role != "user" or msgs[-1].role != "assistant":
        raise ConversationError("nothing to undo: the conversation has no turn yet")
    user, reply = msgs[-2], msgs[-1]
    record = conv.undo_log.top(conv.cache.seen[0], len(conv.ids), len(msgs))
    exact = True
    if record is not None:
        with _one_thread():
            conv.cache.rollback(record.point)
        conv.undo_log.pop()
        conv.ids = conv.ids[: record.ids_before]
    else:
        start = turn_start(conv)
        if start is None:  # ids and messages disagree: rebuild the ids from the remaining text
            conv.ids = encode_transcript(conv.tokenizer, conv.settings.system, msgs[:-2])
            conv.invalidate_cache()
            exact = False
        else:
            keep = max(0, start - 1)  # as after any reply: every id but the last in the cache
            if conv.cache.seen[0] > keep and not conv.cache.rewind(0, keep):
                conv.invalidate_cache()
                exact = False
            conv.ids = conv.ids[:start]
    del conv.messages[-2:]
    conv.last = None
    conv.retries = 0
    conv.updated = now_iso()
    conv.dirty = True
    assert conv.cache.seen[0] <= len(conv.ids)
    return Undone(user.content, reply.content, exact, len(conv.pending))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """An undo copies at most a window of slots per layer: too little to split over threads, and on a busy
    machine waking the thread pool for it cost 30 ms where the copy itself takes 0.3 ms."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def turn_start(conv: Conversation) -> int | None:
    """Where the last turn's ids begin, from the message texts and reply lengths; None if the ids disagree.

    A user turn's ids are exactly the chat template's encoding of its text (`Conversation.send` builds them
    so), a reply's length is recorded with it, and a reply that did not end with EOS was closed by the next
    turn: so the boundary can be found without the undo log, and is checked against the ids.
    """
    tok = conv.tokenizer
    msgs = conv.messages
    reply = msgs[-1]
    if reply.tokens is None:
        return None
    first = len(msgs) == 2
    turn = encode_turn(tok, msgs[-2].content, first=first, system=conv.settings.system)
    start = len(conv.ids) - reply.tokens - len(turn)
    if start < 0 or conv.ids[start : start + len(turn)] != turn:
        return None
    if first:
        return start if start == 0 else None
    if msgs[-3].finish_reason != "eos":  # this turn closed the previous reply
        suffix = reply_suffix(tok)
        if conv.ids[start - len(suffix) : start] != suffix:
            return None
        start -= len(suffix)
    return start


def retry(conv: Conversation, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Undo the last turn now and return the events of sending its message again (a new sample).

    At temperature 0 the reply is the same: the cache is back exactly as before the turn. With a seed, the
    retry samples with another seed derived from it, so retries differ but repeat from run to run. A retry
    cancelled before its reply leaves the turn undone (front ends give its text back for editing).
    """
    attempt = conv.retries + 1
    undone = undo(conv)
    conv.next_attempt = attempt
    return conv.send(undone.user_text, cancel)


def edit(conv: Conversation, text: str, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Undo the last turn now and return the events of sending `text` in its place."""
    if not text.strip():
        raise ConversationError("the edited message is empty")
    undo(conv)
    return conv.send(text, cancel)


def fork(conv: Conversation, name: str, *, in_place: bool = False) -> Conversation:
    """The conversation under a new name and id, from the current turn on independent of the original.

    With `in_place`, `conv` itself becomes the fork (its cache and undo log are kept, nothing is copied):
    what a front end wants after saving the original, since a second buffer would double the memory.
    Otherwise a new Conversation with copies of the transcript, the cache and the undo log is returned.
    The caller saves the fork; `ConversationStore.save` refuses a name that another conversation has.
    """
    target = clean_name(name)
    if not conv.messages:
        raise ConversationError("nothing to fork yet: the conversation has no turn")
    if target == conv.name:
        raise ConversationError(f"the fork needs a name other than {conv.name!r}")
    if in_place:
        out = conv
    else:
        cache = conv.engine.new_cache(max_context=conv.cache.capacity)
        if conv.cache.seen[0]:
            cache.restore(conv.cache.snapshot(0))
        out = Conversation(
            conv.engine,
            conv.tokenizer,
            conv.fingerprint,
            replace(conv.settings),
            model_name=conv.model_name,
            messages=[replace(m) for m in conv.messages],
            ids=list(conv.ids),
            cache=cache,
        )
        out.undo_log = conv.undo_log.copy()
        out.last = conv.last
    out.id = uuid.uuid4().hex
    out.name = target
    out.created = out.updated = now_iso()
    out.dirty = True
    return out


def last_reply(conv: Conversation) -> ChatMessage:
    for m in reversed(conv.messages):
        if m.role == "assistant":
            return m
    raise ConversationError("nothing to copy: there is no reply yet")


def fork_saved(store: Any, name: str, new_name: str) -> str:
    """Copy a saved conversation (transcript, cache, undo log) to a new folder under a new name and id.

    Pure file work, no model: the copies are byte for byte (so the cache and its log still pass their
    checks) except the transcript's name, id and times. Files are copied, never linked, and the transcript
    is written last, atomically: until it exists, the new folder is not a conversation.
    """
    from mixchat.session import transcript as tx
    from mixchat.session.cachefile import CACHE_FILE
    from mixchat.session.files import atomic_write_bytes, contained, slug
    from mixchat.session.store import TRANSCRIPT
    from mixchat.session.undo import undo_file_for

    src = store.folder(name)
    t = store.read(name)  # refuse what cannot be read
    target = clean_name(new_name)
    dst = contained(store.root, slug(target))
    if store.exists(target) or dst.exists():
        raise ConversationError(f"a conversation named {target!r} already exists; choose another name")
    d = tx.parse((src / TRANSCRIPT).read_text(encoding="utf-8"))
    d["id"], d["name"] = uuid.uuid4().hex, target
    d["created"] = d["updated"] = now_iso()
    files = (
        [t.cache.file, undo_file_for(t.cache.file)] if t.cache is not None and CACHE_FILE.match(t.cache.file) else []
    )
    try:
        dst.mkdir(parents=True)
        for f in files:
            if (src / f).is_file():
                atomic_write_bytes(dst / f, (src / f).read_bytes())
        atomic_write_bytes(dst / TRANSCRIPT, tx.dump(d).encode("utf-8"))
    except OSError as e:
        raise ConversationError(f"could not copy {name!r} to {dst}: {e.strerror or e}") from None
    return target
