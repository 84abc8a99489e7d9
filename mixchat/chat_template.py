"""Mistral chat templates: a conversation as the exact token ids mistral-common produces.

The model was fine-tuned on one precise layout, so "close enough" is not good enough: a stray space or a
system prompt in the wrong turn changes the ids and, quietly, the answers. The rules below were found by
running mistral-common (1.13) on many conversations and are checked against it in the tests.

Layout, with ``BOS``/``EOS`` the tokenizer's ids and ``enc(s)`` SentencePiece's plain encoding of ``s``
(which prepends its dummy space, so "Hi" becomes ``▁Hi``):

* v1: ``BOS enc("[INST] " + user + " [/INST]") enc(reply) EOS enc("[INST] " + user + " [/INST]") ...``;
  ``[INST]`` is ordinary text here.
* v3: ``BOS [INST] enc(user) [/INST] enc(reply.rstrip(" ")) EOS [INST] enc(user) [/INST] ...``;
  ``[INST]``/``[/INST]`` are single control tokens, and an empty user text encodes to nothing. Tekken's
  ``enc`` adds no dummy space ("Hi" stays ``Hi``); the layout is the same (Mistral Nemo).
* v7 and later (v11, v13: they differ from v7 only in tool calls): as v3, but each system message is a block
  ``[SYSTEM_PROMPT] enc(system) [/SYSTEM_PROMPT]`` where it stands in the conversation, no longer merged
  into a user turn.

Conversation-level rules (mistral-common's normalisation):

* v1/v3: all non-empty system messages, wherever they are, are joined with a blank line into one system
  prompt, which becomes ``system + "\\n\\n" + user`` in one user turn: the FIRST user turn for v1, the LAST
  for v3. v7+: every system message keeps its place as its own block.
* Consecutive messages of one role merge into one turn, their non-empty texts joined with a blank line.
  A system message between them keeps them apart (v1/v3 remove it afterwards).
* v1/v3: if the first turn is not a user turn, an empty user turn is put in front (v7+ does not).
* Nothing is stripped except trailing spaces (not newlines) of v3 replies.
* A reply ends with EOS, except a reply that ends the conversation: that is an unfinished reply for the
  model to continue (mistral-common's ``prefix=True``).

Where mistral-common refuses a conversation (an empty reply, a lone assistant message, a system message
after a reply) these functions apply the same rules instead of failing: a model may end a reply at once,
and a saved conversation holding that empty reply must still be encodable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from mixchat.tokenizer import Tokenizer

__all__ = [
    "ROLES",
    "ChatTemplateError",
    "Message",
    "encode_chat",
    "encode_reply",
    "encode_turn",
    "reply_suffix",
]

ROLES = ("system", "user", "assistant")
_JOIN = "\n\n"


class ChatTemplateError(ValueError):
    """A conversation that cannot be laid out; the message is one printable line."""


@dataclass
class Message:
    """One message of a conversation, as the user and the model see it (plain text, no template)."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ChatTemplateError(f"unknown message role {self.role!r}; expected one of {', '.join(ROLES)}")


def encode_chat(tok: Tokenizer, messages: Sequence[Message], *, close_final_reply: bool = False) -> list[int]:
    """The ids of a whole conversation, identical to mistral-common's ``encode_chat_completion``.

    A conversation ending with a user message is a prompt for the next reply. One ending with an
    assistant message leaves that reply open for the model to continue, unless ``close_final_reply``
    adds its EOS (the layout of a finished conversation, as mistral-common's fine-tuning mode writes it).
    """
    if not messages:
        raise ChatTemplateError("a conversation needs at least one message")
    if _has_system_blocks(tok):
        return _encode_chat_v7(tok, messages, close_final_reply)
    system = _system_prompt(messages)
    turns = _turns(messages)
    users = [i for i, turn in enumerate(turns) if turn.role == "user"]
    system_turn = users[0] if tok.version == "v1" else users[-1]
    open_reply = messages[-1].role == "assistant" and not close_final_reply

    ids = [tok.bos_id]
    for i, turn in enumerate(turns):
        if turn.role == "user":
            ids += _user_ids(tok, turn.content, system if i == system_turn else None)
        else:
            ids += encode_reply(tok, turn.content)
            if not (open_reply and i == len(turns) - 1):
                ids += reply_suffix(tok)
    return ids


def encode_turn(tok: Tokenizer, user_text: str, *, first: bool, system: str | None = None) -> list[int]:
    """The ids one new user turn adds to a conversation whose cache already holds the earlier turns.

    The first turn starts with BOS. Later turns follow the previous reply's EOS (``reply_suffix``), so
    with no system prompt, first turn + reply + EOS + next turn + ... equals ``encode_chat`` of the whole
    conversation, and the cache never needs rebuilding.

    The system prompt goes into the first turn and is ignored on later ones. That is v1's placement, so
    v1 stays identical to ``encode_chat``. v3 places it in the last user turn, which would move it with
    every new turn and invalidate the cached ids; here it stays in the first turn instead (identical to
    mistral-common for the first turn, and for later turns equal to mistral-common's layout of the same
    conversation with the system prompt written into the first user message). v7+ keeps a system message
    where it is, so a system prompt at the start stays there and every turn is identical to mistral-common.
    """
    ids = [tok.bos_id] if first else []
    if _has_system_blocks(tok):
        if first and system:
            ids += _system_ids(tok, system)
        return ids + _user_ids(tok, user_text, None)
    return ids + _user_ids(tok, user_text, system if first else None)


def encode_reply(tok: Tokenizer, text: str) -> list[int]:
    """The ids of an assistant reply's text, without its closing EOS.

    v3 and later drop trailing spaces (not newlines) first, as mistral-common does; v1 keeps the text as is.
    """
    if tok.version != "v1":
        text = text.rstrip(" ")
    return tok.encode(text, bos=False)


def reply_suffix(tok: Tokenizer) -> list[int]:
    """What closes a finished reply before the next user turn: EOS, in both layouts."""
    return [tok.eos_id]


def _user_ids(tok: Tokenizer, text: str, system: str | None) -> list[int]:
    if system:
        text = system + _JOIN + text
    if tok.version == "v1":
        return tok.encode(f"[INST] {text} [/INST]", bos=False)
    if tok.inst_id is None or tok.inst_end_id is None:
        raise ChatTemplateError(f"tokenizer {tok.path} is {tok.version} but lacks [INST]/[/INST] ids")
    return [tok.inst_id, *tok.encode(text, bos=False), tok.inst_end_id]


def _has_system_blocks(tok: Tokenizer) -> bool:
    """Whether the template writes system messages as ``[SYSTEM_PROMPT]`` blocks (v7 and later)."""
    return tok.version not in ("v1", "v3")


def _system_ids(tok: Tokenizer, text: str) -> list[int]:
    if tok.system_id is None or tok.system_end_id is None:
        raise ChatTemplateError(f"tokenizer {tok.path} is {tok.version} but lacks [SYSTEM_PROMPT] ids")
    return [tok.system_id, *tok.encode(text, bos=False), tok.system_end_id]


def _encode_chat_v7(tok: Tokenizer, messages: Sequence[Message], close_final_reply: bool) -> list[int]:
    """v7+: runs of one role merge; each system message is a block in place; no empty user turn in front."""
    open_reply = messages[-1].role == "assistant" and not close_final_reply
    ids = [tok.bos_id]
    runs = [(role, list(group)) for role, group in groupby(messages, key=lambda m: m.role)]
    for i, (role, run) in enumerate(runs):
        if role == "system":
            for m in run:
                ids += _system_ids(tok, m.content)
        elif role == "user":
            ids += _user_ids(tok, _JOIN.join(m.content for m in run if m.content), None)
        else:
            ids += encode_reply(tok, _JOIN.join(m.content for m in run if m.content))
            if not (open_reply and i == len(runs) - 1):
                ids += reply_suffix(tok)
    return ids


def _system_prompt(messages: Sequence[Message]) -> str | None:
    parts = [m.content for m in messages if m.role == "system" and m.content]
    return _JOIN.join(parts) if parts else None


def _turns(messages: Sequence[Message]) -> list[Message]:
    """User and assistant turns: runs of one role merged, system messages removed, a user turn first.

    Runs are formed before system messages are dropped, so a system message between two user messages
    leaves two separate user turns, as in mistral-common.
    """
    turns = [
        Message(role, _JOIN.join(m.content for m in run if m.content))
        for role, group in groupby(messages, key=lambda m: m.role)
        if role != "system"
        for run in [list(group)]
    ]
    if not turns or turns[0].role != "user":
        turns.insert(0, Message("user", ""))
    return turns
