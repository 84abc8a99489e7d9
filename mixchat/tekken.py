"""Tekken: Mistral's tiktoken-based tokenizer (``tekken.json``; Nemo, Small 3.x, Ministral, Magistral).

The file holds a byte-level BPE vocabulary (each entry's bytes in base64, with its merge rank), the regex
that splits text before BPE, the chat-template version, and the special tokens. Ids are laid out with the
special tokens first: ids ``0 .. n_special - 1`` are special (``<unk>``, ``<s>``, ``</s>``, ``[INST]``...),
and vocabulary entry of rank r has id ``n_special + r``. Only the first ``default_vocab_size - n_special``
entries of the vocabulary are used (the file may list more), so the tokenizer has ``default_vocab_size`` ids.
Files of template v7 and earlier may omit the special-token list: the historical list is used then, padded
with ``<SPECIAL_n>`` fillers up to ``default_num_special_tokens``.

Special tokens are never produced from text: a user who types ``[INST]`` gets the characters, not the
control token, because ``encode`` runs the BPE on ordinary text only.

Decoding concatenates the bytes of the ordinary tokens and reads them as UTF-8, an invalid or unfinished
byte run becoming U+FFFD. Special tokens decode to nothing, but they end a byte run: the bytes on each side
are read separately (mistral-common decodes each run of ordinary tokens on its own, and so do we). The
streaming decoder therefore is UTF-8's incremental decoder, reset at every special token.
"""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mixchat.errors import TokenizerError
from mixchat.template_versions import TEMPLATES

__all__ = ["TekkenStream", "TekkenTokenizer"]

# The special tokens of Tekken files that carry no list of their own (template v7 and earlier), by id.
_LEGACY_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip
_FILLER = "<SPECIAL_{}>"


class TekkenTokenizer:
    """A ``tekken.json`` tokenizer behind the same interface as ``SentencePieceTokenizer``."""

    def __init__(self, path: str | Path) -> None:
        import tiktoken

        self.path = Path(path)
        data = _read(self.path)
        try:
            config = data["config"]
            pattern = str(config["pattern"])
            vocab_size = int(config["default_vocab_size"])
            n_special = int(config["default_num_special_tokens"])
            version = str(config.get("version", ""))
            vocab = data["vocab"]
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"tekken file {self.path} lacks or garbles the field {e}") from None
        if version not in TEMPLATES:
            raise TokenizerError(
                f"tekken file {self.path} is chat template {version or '(none)'}; mixchat supports "
                + ", ".join(TEMPLATES)
            )
        self.version: str = version
        self.n_special = n_special
        self.specials = self._special_names(data.get("special_tokens"), n_special)
        n_ordinary = vocab_size - n_special
        if not 0 < n_ordinary <= len(vocab):
            raise TokenizerError(
                f"tekken file {self.path} asks for {vocab_size} ids but has {len(vocab)} entries "
                f"and {n_special} special tokens"
            )
        ranks: dict[bytes, int] = {}
        try:
            for i, entry in enumerate(vocab[:n_ordinary]):
                if int(entry["rank"]) != i:
                    raise TokenizerError(f"tekken file {self.path}: vocabulary entry {i} has rank {entry['rank']}")
                ranks[base64.b64decode(entry["token_bytes"])] = i
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"tekken file {self.path} has a malformed vocabulary entry ({e})") from None
        if len(ranks) != n_ordinary:
            raise TokenizerError(f"tekken file {self.path} lists the same token bytes twice")
        try:
            self._bpe = tiktoken.Encoding(self.path.name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        except ValueError as e:
            raise TokenizerError(f"tekken file {self.path} cannot be used ({e})") from None
        self._bytes = [b""] * n_ordinary
        for token, rank in ranks.items():
            self._bytes[rank] = token
        self.vocab_size: int = vocab_size
        ids = {name: i for i, name in enumerate(self.specials)}
        self.bos_id: int = self._required(ids, "<s>")
        self.eos_id: int = self._required(ids, "</s>")
        self.inst_id: int | None = ids.get("[INST]")
        self.inst_end_id: int | None = ids.get("[/INST]")
        self.system_id: int | None = ids.get("[SYSTEM_PROMPT]")
        self.system_end_id: int | None = ids.get("[/SYSTEM_PROMPT]")
        if self.version != "v1" and (self.inst_id is None or self.inst_end_id is None):
            raise TokenizerError(f"tekken file {self.path} is {self.version} but has no [INST]/[/INST] tokens")

    def __repr__(self) -> str:
        return f"TekkenTokenizer({str(self.path)!r}, version={self.version!r}, vocab_size={self.vocab_size})"

    def _special_names(self, listed: Any, n_special: int) -> list[str]:
        """Special-token names by id: the file's list (by rank) or the legacy one, padded with fillers."""
        if listed is None:
            if self.version not in ("v1", "v3", "v7"):
                raise TokenizerError(f"tekken file {self.path} is {self.version} but lists no special tokens")
            names = list(_LEGACY_SPECIALS)
        else:
            try:
                by_rank = {int(t["rank"]): str(t["token_str"]) for t in listed}
            except (KeyError, TypeError, ValueError):
                raise TokenizerError(f"tekken file {self.path} has a malformed special_tokens list") from None
            if sorted(by_rank) != list(range(len(by_rank))) or len(set(by_rank.values())) != len(by_rank):
                raise TokenizerError(f"tekken file {self.path}: special tokens must have distinct ranks 0..n-1")
            names = [by_rank[i] for i in range(len(by_rank))]
        if len(names) > n_special:
            raise TokenizerError(f"tekken file {self.path} lists {len(names)} special tokens, more than {n_special}")
        return names + [_FILLER.format(i) for i in range(len(names), n_special)]

    def _required(self, ids: dict[str, int], name: str) -> int:
        if name not in ids:
            raise TokenizerError(f"tekken file {self.path} has no {name} token; it is not a chat tokenizer")
        return ids[name]

    # ---- the Tokenizer interface ---------------------------------------------------------------------
    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text``; control-token names in the text stay plain text, never control ids."""
        ids = [self.n_special + r for r in self._bpe.encode_ordinary(text)]
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens contribute nothing but end a byte run (see the module docstring)."""
        parts: list[str] = []
        run = bytearray()
        for token_id in self._checked(ids):
            if token_id < self.n_special:
                parts.append(run.decode("utf-8", errors="replace"))
                run.clear()
            else:
                run += self._bytes[token_id - self.n_special]
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of an ordinary token (b"" for a special one)."""
        token_id = self._checked([token_id])[0]
        return b"" if token_id < self.n_special else self._bytes[token_id - self.n_special]

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry: the special token's name, or the token's text (bytes that are not whole
        characters as ``<0xNN>``)."""
        token_id = self._checked([token_id])[0]
        if token_id < self.n_special:
            return self.specials[token_id]
        raw = self._bytes[token_id - self.n_special]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(f"<0x{b:02X}>" for b in raw)

    def is_control(self, token_id: int) -> bool:
        """True for the special tokens (``<s>``, ``[INST]``...): ids that ``decode`` turns into no text."""
        return self._checked([token_id])[0] < self.n_special

    def is_byte(self, token_id: int) -> bool:
        """True for the 256 single-byte tokens, which may hold only part of a character."""
        return 0 <= self._checked([token_id])[0] - self.n_special < 256

    def token_text(self, token_id: int) -> str:
        """A short printable label for one token (partial characters as ``<0xNN>``, controls by name)."""
        piece = self.id_to_piece(token_id)
        if self.is_control(token_id):
            return piece
        return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in piece)

    def stream(self) -> TekkenStream:
        """A fresh incremental decoder for one generated sequence."""
        return TekkenStream(self)

    def _checked(self, ids: Iterable[int]) -> list[int]:
        out = [int(i) for i in ids]
        for token_id in out:
            if not 0 <= token_id < self.vocab_size:
                raise TokenizerError(
                    f"token id {token_id} is outside the vocabulary of {self.path} (0..{self.vocab_size - 1})"
                )
        return out


class TekkenStream:
    """Token ids in, text out as soon as it is certain; everything returned adds up to ``decode``.

    UTF-8's incremental decoder holds back the bytes of an unfinished character and, like a one-shot
    decode with ``errors="replace"``, turns a byte run that cannot become a character into U+FFFD as soon as
    that is certain. A special token ends the run (``final=True``), as in ``TekkenTokenizer.decode``.
    """

    def __init__(self, tokenizer: TekkenTokenizer) -> None:
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one id; return the text that became certain (often "", never half a character)."""
        raw = self._tok.token_bytes(token_id)
        if self._tok.is_control(token_id):
            return self._utf8.decode(b"", final=True)
        return self._utf8.decode(raw)

    def flush(self) -> str:
        """End the sequence: an unfinished byte run reads as U+FFFD, as ``decode`` writes it."""
        return self._utf8.decode(b"", final=True)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer {path}: not a tekken JSON file ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"cannot read tokenizer {path}: not a tekken JSON file")
    return data
