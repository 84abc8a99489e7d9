"""Tokenizers for Mistral-family models: the ``Tokenizer`` protocol, SentencePiece, and a streaming detokenizer.

Mistral ships two tokenizer formats: SentencePiece (``tokenizer.model[.vN]``, Mistral 7B, Mixtral) and Tekken
(``tekken.json``, a tiktoken byte-level BPE; Nemo, Small 3.x, Ministral, Magistral). The rest of mixchat sees
only the ``Tokenizer`` protocol below; ``load_tokenizer`` picks the class from the file. Tekken lives in
``mixchat/tekken.py``.

Two facts about SentencePiece decoding shape this module:

* ``decode`` drops the leading space of the first visible piece (``▁Hello`` at the start of a sequence
  reads "Hello"), but only there: the same piece later in the sequence keeps its space. Control tokens
  before it do not count as "visible".
* With byte fallback, one character may be spread over several ``<0xNN>`` pieces. Decoding an
  unfinished run yields one U+FFFD per byte, which turns into the real character once the run completes.

So decoding tokens one at a time and concatenating the pieces is wrong in both directions; the
``StreamDecoder`` below emits text only where it is certain the full decode will agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import sentencepiece

from mixchat.errors import TokenizerError as TokenizerError  # re-exported
from mixchat.template_versions import TEMPLATES

__all__ = [
    "TEMPLATES",
    "SentencePieceTokenizer",
    "StreamDecoder",
    "TextStream",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
]


_REPLACEMENT = "\ufffd"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE_SYMBOL = "\u2581"  # "▁", SentencePiece's visible space
_INST, _INST_END = "[INST]", "[/INST]"
_SYSTEM_PROMPT = "[SYSTEM_PROMPT]"
_SYSTEM_PROMPT_END = "[/SYSTEM_PROMPT]"
_VERSION_SUFFIX = re.compile(r"\.v(\d+)(m\d+)?$")
# File suffixes and the chat layout each implies: v2 differs from v3 only in how tool calls are written,
# which a plain chat never uses; "m1" (v7m1) marks multimodal extras, not a different text layout.
_SUFFIX_LAYOUT = {1: "v1", 2: "v3", 3: "v3", 7: "v7", 11: "v11", 13: "v13"}


class TextStream(Protocol):
    """An incremental decoder for one generated sequence (see ``StreamDecoder`` for the invariant)."""

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class Tokenizer(Protocol):
    """What the chat template, the engine and the front ends need from a tokenizer, whatever its format.

    ``version`` is the chat-template version (one of ``TEMPLATES``); the control ids a template needs are
    None where the vocabulary has no such token.
    """

    path: Path
    vocab_size: int
    bos_id: int
    eos_id: int
    version: str
    inst_id: int | None  # [INST]
    inst_end_id: int | None  # [/INST]
    system_id: int | None  # [SYSTEM_PROMPT]
    system_end_id: int | None  # [/SYSTEM_PROMPT]

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def is_control(self, token_id: int) -> bool: ...

    def token_text(self, token_id: int) -> str: ...

    def stream(self) -> TextStream: ...


def load_tokenizer(path: str | Path, template: str | None = None) -> Tokenizer:
    """The tokenizer in ``path`` (``tekken.json`` or a SentencePiece model), its template forced to ``template``.

    Without ``template`` the version comes from the files (Tekken's ``config.version``, SentencePiece's file
    suffix or vocabulary). An override is checked against the vocabulary: a layout whose control tokens the
    vocabulary lacks is refused rather than written as plain text.
    """
    path = Path(path)
    tok: Tokenizer
    if path.suffix == ".json":
        from mixchat.tekken import TekkenTokenizer

        tok = TekkenTokenizer(path)
    else:
        tok = SentencePieceTokenizer(path)
    if template is not None:
        set_template(tok, template)
    return tok


def set_template(tok: Tokenizer, template: str) -> None:
    """Force the chat-template version of ``tok`` (``--template``), if its vocabulary can write it."""
    if template not in TEMPLATES:
        raise TokenizerError(f"unknown chat template {template!r}; use one of {', '.join(TEMPLATES)}")
    if template != "v1" and (tok.inst_id is None or tok.inst_end_id is None):
        raise TokenizerError(f"template {template} needs [INST]/[/INST] control tokens, which {tok.path} lacks")
    if template not in ("v1", "v3") and (tok.system_id is None or tok.system_end_id is None):
        raise TokenizerError(
            f"template {template} needs [SYSTEM_PROMPT]/[/SYSTEM_PROMPT] control tokens, which {tok.path} lacks"
        )
    tok.version = template


class SentencePieceTokenizer:
    """A Mistral SentencePiece tokenizer and the chat-template version its file name or vocabulary implies.

    The version decides how a conversation is laid out (see ``chat_template``): "v1" writes ``[INST]``
    as plain text, "v3" uses the ``[INST]``/``[/INST]`` control tokens, "v7" adds ``[SYSTEM_PROMPT]``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sp = _load_processor(self.path)
        self.vocab_size: int = self._sp.get_piece_size()
        self.bos_id: int = self._required_id(self._sp.bos_id(), "beginning-of-sequence")
        self.eos_id: int = self._required_id(self._sp.eos_id(), "end-of-sequence")
        self.inst_id: int | None = self._control_id(_INST)
        self.inst_end_id: int | None = self._control_id(_INST_END)
        self.system_id: int | None = self._control_id(_SYSTEM_PROMPT)
        self.system_end_id: int | None = self._control_id(_SYSTEM_PROMPT_END)
        has_inst = self.inst_id is not None and self.inst_end_id is not None
        has_system = self.system_id is not None and self.system_end_id is not None
        self.version: str = _detect_version(self.path, has_inst, has_system)
        self._anchor: tuple[int, str] | None = None

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, version={self.version!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text``; control-token names in the text stay plain text, never control ids."""
        ids: list[int] = self._sp.encode(text)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; control tokens (BOS, EOS, ``[INST]``...) contribute nothing."""
        return self._sp.decode(self._checked(ids))

    def id_to_piece(self, token_id: int) -> str:
        """The raw vocabulary entry, e.g. ``▁Hello`` or ``<0x0A>``."""
        return self._sp.id_to_piece(self._checked([token_id])[0])

    def is_control(self, token_id: int) -> bool:
        """True for BOS, EOS, ``[INST]`` and the like: ids that ``decode`` turns into no text."""
        return bool(self._sp.is_control(self._checked([token_id])[0]))

    def is_byte(self, token_id: int) -> bool:
        """True for byte-fallback pieces (``<0xNN>``), which may hold only part of a character."""
        return bool(self._sp.is_byte(self._checked([token_id])[0]))

    def token_text(self, token_id: int) -> str:
        """A short, printable label for one token, for views that show tokens one by one.

        A single token is not always text: a byte piece may be a third of a character. Rather than show
        U+FFFD, such bytes keep their ``<0xNN>`` name; ASCII bytes and whitespace are shown as the
        character or its escape (``\\n``), and ``▁`` as a space.
        """
        token_id = int(token_id)
        piece = self.id_to_piece(token_id)
        if self._sp.is_control(token_id) or self._sp.is_unknown(token_id):
            return piece
        match = _BYTE_PIECE.fullmatch(piece) if self._sp.is_byte(token_id) else None
        if match is not None:
            value = int(match.group(1), 16)
            return _printable(chr(value)) if value < 0x80 else piece
        return _printable(piece.replace(_SPACE_SYMBOL, " "))

    def stream(self) -> StreamDecoder:
        """A fresh incremental decoder for one generated sequence."""
        return StreamDecoder(self)

    def _stream_anchor(self) -> tuple[int, str]:
        # Searched once per tokenizer, not once per stream: a session opens a stream for every reply.
        if self._anchor is None:
            self._anchor = _find_anchor(self)
        return self._anchor

    def _control_id(self, piece: str) -> int | None:
        token_id = self._sp.piece_to_id(piece)
        if token_id == self._sp.unk_id() or not self._sp.is_control(token_id):
            return None
        return token_id

    def _required_id(self, token_id: int, what: str) -> int:
        if token_id < 0:
            raise TokenizerError(f"tokenizer {self.path} defines no {what} token; it is not a chat tokenizer")
        return token_id

    def _checked(self, ids: Iterable[int]) -> list[int]:
        # Accept numpy/torch integers, and turn SentencePiece's bare IndexError into a message that names
        # the id: a model whose output layer is larger than the vocabulary can produce such ids.
        out = [int(i) for i in ids]
        for token_id in out:
            if not 0 <= token_id < self.vocab_size:
                raise TokenizerError(
                    f"token id {token_id} is outside the vocabulary of {self.path} (0..{self.vocab_size - 1})"
                )
        return out


def _load_processor(path: Path) -> sentencepiece.SentencePieceProcessor:
    if not path.exists():
        raise TokenizerError(f"tokenizer file not found: {path}")
    if path.is_dir():
        raise TokenizerError(f"tokenizer path is a directory, not a file: {path}")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TokenizerError(f"cannot read tokenizer {path}: not a SentencePiece model ({reason})") from exc


def _detect_version(path: Path, has_inst_controls: bool, has_system_prompt_controls: bool) -> str:
    """The chat-template version: the file suffix when it names one, else the vocabulary decides.

    The suffix wins because mistral-common picks its template from the file name, and matching it id for
    id is the point; a bare ``tokenizer.model`` (Hugging Face layout) carries no suffix, so the
    vocabulary is the only evidence there (``--template`` overrides either).
    """
    match = _VERSION_SUFFIX.search(path.name)
    if match is None:
        if has_system_prompt_controls and has_inst_controls:
            return "v7"
        return "v3" if has_inst_controls else "v1"
    number = int(match.group(1))
    layout = _SUFFIX_LAYOUT.get(number)
    if layout is None:
        known = ", ".join(f"v{n}" for n in _SUFFIX_LAYOUT)
        raise TokenizerError(f"tokenizer {path} is chat template v{number}; mixchat supports {known}")
    if layout != "v1" and not has_inst_controls:
        raise TokenizerError(f"tokenizer {path} is named v{number} but has no [INST]/[/INST] control tokens")
    if layout not in ("v1", "v3") and not has_system_prompt_controls:
        raise TokenizerError(f"tokenizer {path} is named v{number} but has no [SYSTEM_PROMPT] control tokens")
    return layout


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


class StreamDecoder:
    """Turns token ids, one at a time, into text that can be shown at once.

    Invariant: the concatenation of everything ``push`` and ``flush`` return equals
    ``tokenizer.decode`` of all pushed ids, character for character.

    Only the ids not yet shown are kept ("pending"). They are decoded behind a fixed anchor token: a
    plain piece with no leading space, so the decode of the pending ids reads exactly as it would in the
    middle of the sequence (no dropped leading space), and the anchor's own text is cut off again. Until
    the first visible text the anchor is left out, because there the leading space *is* dropped. Pending
    ids are released when their text does not end in U+FFFD, i.e. no byte run is left unfinished; a
    finished character cannot change when more bytes follow (UTF-8 is self-synchronising). Each push
    thus decodes a handful of ids: O(1) per token.
    """

    # Past this many held ids (only possible with long runs of invalid bytes), the safe head is released.
    _MAX_PENDING = 16

    def __init__(self, tokenizer: SentencePieceTokenizer) -> None:
        self._tok = tokenizer
        self._anchor_id, self._anchor_text = tokenizer._stream_anchor()
        self._pending: list[int] = []
        self._started = False  # True once a non-control piece is behind us: no more leading-space stripping

    def push(self, token_id: int) -> str:
        """Add one id; return the text that became certain (often "", never a half character)."""
        token_id = int(token_id)
        if not self._pending and self._tok.is_control(token_id):
            return ""  # nothing to finish and it decodes to nothing: keep the window small
        self._pending.append(token_id)
        text = self._decode(self._pending)
        if text and not text.endswith(_REPLACEMENT):
            self._pending.clear()
            self._started = True
            return text
        if len(self._pending) > self._MAX_PENDING:
            return self._release_head()
        return ""

    def flush(self) -> str:
        """End the sequence: return whatever is left, then start afresh for a new sequence.

        An unfinished byte run stays unfinished now, so it reads as U+FFFD, as ``decode`` writes it.
        """
        text = self._decode(self._pending)
        self._pending.clear()
        self._started = False
        return text

    def _decode(self, ids: list[int]) -> str:
        if not self._started:
            return self._tok.decode(ids)
        return self._tok.decode([self._anchor_id, *ids])[len(self._anchor_text) :]

    def _release_head(self) -> str:
        """Emit the pending ids up to the last point no character can straddle; keep the rest."""
        for split in range(len(self._pending) - 1, 0, -1):
            if self._is_char_boundary(split):
                head = self._pending[:split]
                text = self._decode(head)
                del self._pending[:split]
                # The head may hold a lone "▁" that decodes to nothing yet used up the leading-space rule.
                self._started = self._started or not all(self._tok.is_control(i) for i in head)
                return text
        return ""

    def _is_char_boundary(self, split: int) -> bool:
        # A character crossing `split` would need a continuation byte at `split` and its lead byte at
        # most three ids earlier.
        if not _is_continuation_byte(self._tok, self._pending[split]):
            return True
        before = self._pending[max(0, split - 3) : split]
        return not any(_is_lead_byte(self._tok, i) for i in before)


def _byte_value(tok: SentencePieceTokenizer, token_id: int) -> int | None:
    if not tok.is_byte(token_id):
        return None
    match = _BYTE_PIECE.fullmatch(tok.id_to_piece(token_id))
    return int(match.group(1), 16) if match else None


def _is_lead_byte(tok: SentencePieceTokenizer, token_id: int) -> bool:
    value = _byte_value(tok, token_id)
    return value is not None and value >= 0xC0


def _is_continuation_byte(tok: SentencePieceTokenizer, token_id: int) -> bool:
    value = _byte_value(tok, token_id)
    return value is not None and 0x80 <= value < 0xC0


def _find_anchor(tok: SentencePieceTokenizer) -> tuple[int, str]:
    """A plain piece without a leading space whose decode is itself: it absorbs the start-of-text rules."""
    likely = [tok._sp.piece_to_id(c) for c in "a.x"]
    for token_id in [*likely, *range(tok.vocab_size)]:
        piece = tok.id_to_piece(token_id)
        if tok.is_control(token_id) or tok.is_byte(token_id) or piece.startswith(_SPACE_SYMBOL):
            continue
        text = tok.decode([token_id])
        if text and text == piece and _REPLACEMENT not in text:
            return token_id, text
    raise TokenizerError(f"tokenizer {tok.path} has no plain text piece to decode a stream with")
