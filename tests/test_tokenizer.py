"""Tokenizer loading, version detection, and the streaming detokenizer.

References are independent of our code: raw sentencepiece and mistral-common's own tokenizer for ids,
``Tokenizer.decode`` (i.e. sentencepiece's full decode) for what a stream must add up to.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import sentencepiece

from mixchat.tokenizer import SentencePieceTokenizer as Tokenizer
from mixchat.tokenizer import TokenizerError

mistral_common = pytest.importorskip("mistral_common")
from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer  # noqa: E402

DATA = Path(mistral_common.__file__).parent / "data"
V1 = DATA / "tokenizer.model.v1"
V3 = DATA / "mistral_instruct_tokenizer_240323.model.v3"
V7 = DATA / "mistral_instruct_tokenizer_241114.model.v7"
FFFD = "\ufffd"

TEXTS = [
    "Hello",
    " Hello",
    "  two leading spaces",
    "trailing space ",
    "multiple   inner    spaces",
    "line one\nline two\n\n\tindented\r\n",
    "\n",
    " ",
    "",
    "Grüße, 東京 🚀",
    "emoji run 🚀🚀🌸👍🏽 and a family 👨‍👩‍👧",
    "日本語のテキストと中文字符和한국어",
    "accents: é è ê ë à ç ñ ø å ß œ Ω",
    "math ∀x ∈ ℝ: x² ≥ 0 → ✓",
    "[INST] looks like a control token [/INST]",
    "<0x0A> is text here, not a byte",
    "mixed 🚀東京\n  é  \n",
]


@pytest.fixture(scope="module", params=[V1, V3], ids=["v1", "v3"])
def path(request: pytest.FixtureRequest) -> Path:
    return request.param


@pytest.fixture(scope="module")
def tok(path: Path) -> Tokenizer:
    return Tokenizer(path)


@pytest.fixture(scope="module")
def sp(path: Path) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def _piece_id(sp: sentencepiece.SentencePieceProcessor, piece: str) -> int:
    token_id = sp.piece_to_id(piece)
    assert token_id != sp.unk_id(), piece
    return token_id


# --- loading and version detection ----------------------------------------------------------------


def test_versions_of_shipped_files() -> None:
    v1, v3 = Tokenizer(V1), Tokenizer(V3)
    assert (v1.version, v1.inst_id, v1.inst_end_id) == ("v1", None, None)
    ref = sentencepiece.SentencePieceProcessor(model_file=str(V3))
    assert v3.version == "v3"
    assert (v3.inst_id, v3.inst_end_id) == (ref.piece_to_id("[INST]"), ref.piece_to_id("[/INST]"))


def test_version_from_vocab_without_suffix(tmp_path: Path) -> None:
    # The Hugging Face layout names every tokenizer plain "tokenizer.model".
    for source, expected in [(V1, "v1"), (V3, "v3")]:
        target = tmp_path / expected / "tokenizer.model"
        target.parent.mkdir()
        shutil.copy(source, target)
        assert Tokenizer(target).version == expected


def test_suffix_is_a_hint(tmp_path: Path) -> None:
    # mistral-common picks its template by file name: a v3 vocabulary named .v1 gets the v1 layout.
    shutil.copy(V3, tmp_path / "tokenizer.model.v1")
    assert Tokenizer(tmp_path / "tokenizer.model.v1").version == "v1"
    shutil.copy(V1, tmp_path / "tokenizer.model.v3")
    with pytest.raises(TokenizerError, match=r"no \[INST\]"):
        Tokenizer(tmp_path / "tokenizer.model.v3")


def test_v7_sentencepiece_loads(tmp_path: Path) -> None:
    # By suffix, and by vocabulary ([SYSTEM_PROMPT] controls) for a bare Hugging Face file name.
    ref = sentencepiece.SentencePieceProcessor(model_file=str(V7))
    for target in (V7, tmp_path / "tokenizer.model"):
        if target != V7:
            shutil.copy(V7, target)
        tok = Tokenizer(target)
        assert tok.version == "v7"
        expected = (ref.piece_to_id("[SYSTEM_PROMPT]"), ref.piece_to_id("[/SYSTEM_PROMPT]"))
        assert (tok.system_id, tok.system_end_id) == expected


def test_unknown_template_suffix_is_refused(tmp_path: Path) -> None:
    shutil.copy(V3, tmp_path / "tokenizer.model.v5")
    with pytest.raises(TokenizerError, match="v5"):
        Tokenizer(tmp_path / "tokenizer.model.v5")


@pytest.mark.parametrize("content", [None, b"", b"not a sentencepiece model" * 10, "dir"])
def test_unusable_files_give_one_clear_line(tmp_path: Path, content: bytes | str | None) -> None:
    target = tmp_path / "tokenizer.model"
    if content == "dir":
        target.mkdir()
    elif content is not None:
        target.write_bytes(content)
    with pytest.raises(TokenizerError) as info:
        Tokenizer(target)
    message = str(info.value)
    assert str(target) in message
    assert "\n" not in message


def test_out_of_vocabulary_id(tok: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([1, tok.vocab_size])


# --- encode / decode ---------------------------------------------------------------------------------


def test_basic_properties(tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor) -> None:
    assert tok.vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_id) == (sp.bos_id(), sp.eos_id())
    assert all(tok.id_to_piece(i) == sp.id_to_piece(i) for i in range(0, tok.vocab_size, 97))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_mistral_common(tok: Tokenizer, path: Path, text: str) -> None:
    reference = SentencePieceTokenizer(path)
    for bos in (True, False):
        for eos in (True, False):
            assert tok.encode(text, bos=bos, eos=eos) == reference.encode(text, bos=bos, eos=eos)
    assert tok.decode(tok.encode(text, eos=True)) == reference.decode(reference.encode(text, bos=True, eos=True))


def test_token_text(tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor) -> None:
    assert tok.token_text(_piece_id(sp, "<0x0A>")) == "\\n"
    assert tok.token_text(_piece_id(sp, "<0x09>")) == "\\t"
    assert tok.token_text(_piece_id(sp, "<0x41>")) == "A"
    assert tok.token_text(_piece_id(sp, "<0xE6>")) == "<0xE6>"
    assert tok.token_text(_piece_id(sp, "▁Hello")) == " Hello"
    assert tok.token_text(tok.eos_id) == sp.id_to_piece(tok.eos_id)
    # Every label is one printable line; byte pieces never show as U+FFFD (the vocabulary does hold a
    # literal U+FFFD piece, which may).
    labels = [tok.token_text(i) for i in range(tok.vocab_size)]
    assert all(label.isprintable() for label in labels)
    assert not any(FFFD in labels[i] for i in range(tok.vocab_size) if sp.is_byte(i))


# --- streaming ---------------------------------------------------------------------------------------


def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    decoder = tok.stream()
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_decode(tok: Tokenizer, text: str) -> None:
    # With and without BOS/EOS around it, and continuing after a prompt-like prefix.
    for ids in (tok.encode(text, bos=False), tok.encode(text, eos=True), tok.encode("Q: " + text)[3:]):
        chunks = _stream(tok, ids)
        assert "".join(chunks) == tok.decode(ids)
        assert not any(FFFD in chunk for chunk in chunks), chunks


def test_multibyte_character_waits_until_complete(tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor) -> None:
    rocket = [_piece_id(sp, f"<0x{b:02X}>") for b in "🚀".encode()]
    decoder = tok.stream()
    assert decoder.push(_piece_id(sp, "▁Go")) == "Go"
    assert [decoder.push(i) for i in rocket] == ["", "", "", "🚀"]
    assert decoder.flush() == ""


def test_leading_space_dropped_only_at_start(tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor) -> None:
    hello, space = _piece_id(sp, "▁Hello"), _piece_id(sp, "▁")
    for ids in ([hello, hello], [tok.bos_id, hello, tok.eos_id, hello], [space, hello], [space, space, hello]):
        assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_unfinished_bytes_at_the_end(tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor) -> None:
    ids = [_piece_id(sp, "▁ok"), _piece_id(sp, "<0xF0>"), _piece_id(sp, "<0x9F>")]
    chunks = _stream(tok, ids)
    assert chunks[:-1] == ["ok", "", ""]
    assert "".join(chunks) == tok.decode(ids)


def test_decoder_is_reusable_after_flush(tok: Tokenizer) -> None:
    decoder = tok.stream()
    for text in ("First reply 🚀", " second reply, 東京"):
        ids = tok.encode(text, bos=False)
        assert "".join(decoder.push(i) for i in ids) + decoder.flush() == tok.decode(ids)


def test_random_ids_stream_equals_decode(tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor) -> None:
    # Arbitrary sequences, heavy on byte pieces, controls and spaces: whatever decode says, the stream says.
    rng = random.Random(1234)
    bytes_ = [i for i in range(tok.vocab_size) if sp.is_byte(i)]
    odd = [0, tok.bos_id, tok.eos_id, _piece_id(sp, "▁"), _piece_id(sp, "▁▁")]
    pools = [range(tok.vocab_size), bytes_, bytes_, odd]
    for _ in range(600):
        ids = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 12))]
        assert "".join(_stream(tok, ids)) == tok.decode(ids), ids


@pytest.mark.parametrize("stray", ["<0x80>", "<0xF0>"])
def test_long_invalid_byte_run_is_released_early(
    tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor, stray: str
) -> None:
    # Stray lead or continuation bytes never complete; holding them all would make each push slower.
    ids = [_piece_id(sp, stray)] * 2000 + [_piece_id(sp, "<0xE6>"), _piece_id(sp, "<0x9D>")]
    chunks = _stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids)
    assert len("".join(chunks[:-1])) >= 1950


@pytest.mark.parametrize("invalid", [0, 5, 13, 14, 15, 16, 30])
def test_early_release_never_splits_a_character(
    tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor, invalid: int
) -> None:
    # Stray bytes make the decoder release its held ids early, while a real character is still arriving.
    grin = [_piece_id(sp, f"<0x{b:02X}>") for b in "😀".encode()]
    ids = [_piece_id(sp, "<0x80>")] * invalid + grin + [_piece_id(sp, "▁ok")]
    chunks = _stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids)
    assert "😀" in "".join(chunks)


def test_early_release_keeps_the_leading_space_rule(tok: Tokenizer, sp: sentencepiece.SentencePieceProcessor) -> None:
    # A lone "▁" decodes to nothing at the start, yet it uses up the start: the next space must show.
    ids = [_piece_id(sp, "▁"), *[tok.eos_id] * 20, _piece_id(sp, "▁Hello")]
    assert "".join(_stream(tok, ids)) == tok.decode(ids) == " Hello"
