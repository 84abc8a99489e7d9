"""Tekken (tekken.json through tiktoken) against mistral-common's own Tekkenizer, on the real files it ships.

Ids and one-shot decodes come from mistral-common; what a stream must add up to is our one-shot decode,
which is itself checked against mistral-common's. Nothing expected is hard-coded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mixchat.tekken import TekkenTokenizer
from mixchat.tokenizer import TokenizerError, load_tokenizer

pytest.importorskip("mistral_common")
from helpers.tekken_files import NEMO_TEKKEN, SMALL_TEKKEN, derived_tekken
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

TEXTS = [
    "Hello",
    " Hello",
    "  two leading spaces and trailing  ",
    "line one\nline two\n\n\tindented\r\n",
    "",
    "Grüße, 東京 🚀",
    "emoji run 🚀🚀🌸👍🏽 and a family 👨‍👩‍👧",
    "日本語のテキストと中文字符和한국어",
    "math ∀x ∈ ℝ: x² ≥ 0 → ✓",
    "[INST] looks like a control token [/INST] <s> </s> [SYSTEM_PROMPT]",
    "<SPECIAL_20> [TOOL_CALLS] [IMG]",
]


@pytest.fixture(scope="module", params=[NEMO_TEKKEN, SMALL_TEKKEN], ids=["nemo", "small"])
def pair(request: pytest.FixtureRequest) -> tuple[TekkenTokenizer, Tekkenizer]:
    return TekkenTokenizer(request.param), Tekkenizer.from_file(request.param)


def test_shape_matches_mistral_common(pair: tuple[TekkenTokenizer, Tekkenizer]) -> None:
    tok, ref = pair
    assert tok.vocab_size == ref.n_words
    assert tok.n_special == ref.num_special_tokens
    assert (tok.bos_id, tok.eos_id) == (ref.bos_id, ref.eos_id)
    assert (tok.inst_id, tok.inst_end_id) == (ref.get_special_token("[INST]"), ref.get_special_token("[/INST]"))
    assert tok.version == ref.version.value


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_mistral_common(pair: tuple[TekkenTokenizer, Tekkenizer], text: str) -> None:
    tok, ref = pair
    ids = tok.encode(text, bos=True, eos=True)
    assert ids == ref.encode(text, bos=True, eos=True)
    assert tok.decode(ids) == ref.decode(ids, special_token_policy=SpecialTokenPolicy.IGNORE) == text


def test_control_token_lookalikes_stay_text(pair: tuple[TekkenTokenizer, Tekkenizer]) -> None:
    tok, _ = pair
    text = "[INST] hi [/INST]"
    ids = tok.encode(text, bos=False)
    assert tok.inst_id not in ids and tok.inst_end_id not in ids
    assert all(not tok.is_control(i) for i in ids)
    assert tok.decode(ids) == text


def _random_ids(tok: TekkenTokenizer, rng: random.Random, n: int) -> list[int]:
    """Ids mixing ordinary text, lone byte tokens (invalid and partial UTF-8 runs) and special tokens."""
    text_ids = tok.encode(rng.choice(TEXTS[5:8]), bos=False)
    ids: list[int] = []
    while len(ids) < n:
        r = rng.random()
        if r < 0.3:
            ids.append(tok.n_special + rng.randrange(0x80, 0x100))  # a continuation or lead byte alone
        elif r < 0.4:
            ids.append(rng.choice([tok.bos_id, tok.eos_id, tok.inst_id or 0]))
        elif r < 0.5:
            ids += [tok.n_special + b for b in "東".encode()[: rng.randrange(1, 3)]]  # a cut-off character
        else:
            ids.append(rng.choice(text_ids))
    return ids


def test_stream_adds_up_to_one_shot_decode(pair: tuple[TekkenTokenizer, Tekkenizer]) -> None:
    tok, ref = pair
    rng = random.Random(14)
    for _ in range(200):
        ids = _random_ids(tok, rng, rng.randrange(1, 40))
        whole = tok.decode(ids)
        assert whole == ref.decode(ids, special_token_policy=SpecialTokenPolicy.IGNORE)
        stream = tok.stream()
        pieces = [stream.push(i) for i in ids]
        assert "".join(pieces) + stream.flush() == whole, ids
        # Nothing is shown before it is certain: every prefix of the stream is a prefix of the whole text.
        assert all(whole.startswith("".join(pieces[:k])) for k in range(len(pieces)))


def test_stream_of_multibyte_text_emits_whole_characters(pair: tuple[TekkenTokenizer, Tekkenizer]) -> None:
    tok, _ = pair
    text = "東京 🚀 👨‍👩‍👧 é"
    # Byte by byte: the worst case for a streaming decoder.
    ids = [tok.n_special + b for b in text.encode()]
    assert tok.decode(ids) == text
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + stream.flush() == text


def test_out_of_vocabulary_id(pair: tuple[TekkenTokenizer, Tekkenizer]) -> None:
    tok, _ = pair
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([1, tok.vocab_size])


def test_token_text_labels(pair: tuple[TekkenTokenizer, Tekkenizer]) -> None:
    tok, _ = pair
    assert tok.token_text(tok.inst_id or 0) == "[INST]"
    assert tok.token_text(tok.n_special + 0xE6) == "<0xE6>"
    assert tok.token_text(tok.n_special + ord("\n")) == "\\n"


def test_versions_and_loader(tmp_path: Path) -> None:
    for version in ("v7", "v11", "v13"):
        path = derived_tekken(version, tmp_path / version)
        tok = load_tokenizer(path)
        ref = Tekkenizer.from_file(path)
        assert isinstance(tok, TekkenTokenizer) and tok.version == version
        assert tok.system_id == ref.get_special_token("[SYSTEM_PROMPT]")
    nemo = load_tokenizer(NEMO_TEKKEN, template="v7")  # the legacy list has [SYSTEM_PROMPT]
    assert nemo.version == "v7"
    with pytest.raises(TokenizerError, match="unknown chat template"):
        load_tokenizer(NEMO_TEKKEN, template="v9")


@pytest.mark.parametrize(
    "change",
    ["not json", "no config", "bad version", "too few entries"],
)
def test_unusable_files_give_one_line(tmp_path: Path, change: str) -> None:
    data = json.loads(NEMO_TEKKEN.read_text(encoding="utf-8"))
    path = tmp_path / "tekken.json"
    if change == "not json":
        path.write_text("{ nope")
    else:
        if change == "no config":
            del data["config"]
        elif change == "bad version":
            data["config"]["version"] = "v99"
        else:
            data["vocab"] = data["vocab"][:1000]
        path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError) as info:
        TekkenTokenizer(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_template_override_matches_mistral_common(tmp_path: Path) -> None:
    """--template v7 on Nemo's v3 file lays out as mistral-common does for the same vocabulary marked v7."""
    from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from mixchat.chat_template import Message, encode_chat

    tok = load_tokenizer(NEMO_TEKKEN, template="v7")
    ref = MistralTokenizer.from_file(str(derived_tekken("v7", tmp_path, source=NEMO_TEKKEN)))
    request = ChatCompletionRequest(messages=[SystemMessage(content="Be brief."), UserMessage(content="Hi 🚀")])
    expected = ref.encode_chat_completion(request).tokens
    conversation = [Message("system", "Be brief."), Message("user", "Hi 🚀")]
    assert encode_chat(tok, conversation) == expected
    assert encode_chat(load_tokenizer(NEMO_TEKKEN), conversation) != expected  # v3 lays it out otherwise
