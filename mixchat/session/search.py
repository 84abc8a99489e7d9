"""Search the text of every saved conversation: names, system prompts and messages.

Plain case-insensitive substring search over the transcripts (the human-readable JSON), so it needs no
model and no index: conversations are read one by one, and an unreadable one is skipped, never changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mixchat.session.errors import ConversationError, TranscriptError

SNIPPET = 36  # characters of context on each side of a match


@dataclass(frozen=True)
class SearchHit:
    name: str  # the conversation
    role: str  # "name", "system", "user" or "assistant"
    index: int  # the message's index in the conversation (-1 for the name and the system prompt)
    snippet: str  # the match with some context, on one line


def search(store: Any, query: str, limit_per_conversation: int = 20) -> list[SearchHit]:
    """Every place `query` occurs, conversation by conversation (most recently updated first)."""
    needle = query.strip().lower()
    if not needle:
        raise ConversationError("search needs some text to look for")
    hits: list[SearchHit] = []
    for info in store.list():
        if info.error is not None:
            continue
        try:
            t = store.read(info.name)
        except (TranscriptError, ConversationError, OSError):
            continue
        places: list[tuple[str, int, str]] = [("name", -1, t.name)]
        if t.settings.system:
            places.append(("system", -1, t.settings.system))
        places += [(m.role, i, m.content) for i, m in enumerate(t.messages)]
        found = [SearchHit(t.name, role, i, s) for role, i, text in places if (s := snippet(text, needle))]
        hits += found[:limit_per_conversation]
    return hits


def matching_names(store: Any, query: str) -> set[str]:
    """Names of the conversations whose text contains `query` (every one for an empty query)."""
    if not query.strip():
        return {info.name for info in store.list()}
    return {hit.name for hit in search(store, query, limit_per_conversation=1)}


def snippet(text: str, needle: str) -> str | None:
    """The first match of `needle` (lower case) in `text`, with context, whitespace folded; None if absent."""
    lowered = text.lower()
    at = lowered.find(needle)
    if at < 0:
        return None
    source = text if len(lowered) == len(text) else lowered  # lower() changed lengths: show the lowered text
    start, end = max(0, at - SNIPPET), min(len(source), at + len(needle) + SNIPPET)
    body = " ".join(source[start:end].split())
    return ("…" if start > 0 else "") + body + ("…" if end < len(source) else "")
