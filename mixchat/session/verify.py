"""Checking a transcript against itself before trusting it: ids against messages, settings against the model.

A transcript is a file people may edit. Its token ids are what the model saw (and what a rebuilt cache is
made from); its messages are what the user sees. If the two disagree, a rebuilt cache would make the model
continue a conversation different from the one on the screen, so on load they are compared and, on any
disagreement, the ids are rebuilt from the messages.

The ids cannot simply be compared with a re-encoding: a reply is kept as the exact ids that were sampled,
and those need not be the encoding of its text. So the template's own parts (BOS, `[INST] ... [/INST]`,
the EOS after a stopped reply) are compared exactly, as encode_turn lays them out, and each reply's ids
(their count is in the message) are compared through the detokenizer with the reply's text.
"""

from __future__ import annotations

from collections.abc import Sequence

from mixchat.chat_template import encode_turn, reply_suffix
from mixchat.session.conversation import ChatMessage
from mixchat.tokenizer import Tokenizer


def ids_mismatch(tok: Tokenizer, system: str | None, messages: Sequence[ChatMessage], ids: Sequence[int]) -> str | None:
    """None if `ids` are the conversation `messages` laid out as Conversation.send lays them, else why not.

    The reason is a short phrase naming the first message that disagrees.
    """
    pos = 0
    eos = tok.eos_id
    last_reply_closed = True
    for i, m in enumerate(messages):
        if m.role == "user":
            part: list[int] = []
            if pos and not last_reply_closed:
                part += reply_suffix(tok)
            part += encode_turn(tok, m.content, first=pos == 0, system=system)
            if list(ids[pos : pos + len(part)]) != part:
                return f"message {i + 1} (user) does not match its token ids"
            pos += len(part)
            if i + 1 == len(messages):
                return f"message {i + 1} (user) has no reply"
        elif m.role == "assistant":
            if i == 0 or messages[i - 1].role != "user":
                return f"message {i + 1} (assistant) does not follow a user message"
            n = m.tokens if m.tokens is not None else _reply_length(ids, pos, eos)
            reply = list(ids[pos : pos + n])
            if n < 1 or len(reply) != n:
                return f"message {i + 1} (assistant) has fewer token ids than it says ({len(reply)} of {n})"
            text_ids = reply[:-1] if reply[-1] == eos else reply
            if eos in text_ids or tok.decode(text_ids) != m.content:
                return f"message {i + 1} (assistant) does not match its token ids"
            last_reply_closed = reply[-1] == eos
            pos += n
        else:
            return f"message {i + 1} has the role {m.role!r}"
    if pos != len(ids):
        return f"it holds {len(ids) - pos} token ids beyond its messages"
    return None


def _reply_length(ids: Sequence[int], start: int, eos: int) -> int:
    """A hand-made reply without a token count: up to and including the next EOS (or to the end)."""
    for j in range(start, len(ids)):
        if ids[j] == eos:
            return j - start + 1
    return len(ids) - start


def settings_problem(experts_per_token: int | None, n_experts: int | None) -> str | None:
    """Why a saved experts-per-token setting cannot run on this model (None when it can)."""
    if experts_per_token is None:
        return None
    if n_experts is None:
        return None  # a dense model ignores it
    if not 1 <= experts_per_token <= n_experts:
        return f"experts_per_token {experts_per_token}, out of range for this model (1 to {n_experts})"
    return None
