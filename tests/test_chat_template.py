"""The chat layout must be id-for-id what mistral-common produces (DESIGN.md, semantics 8).

Every expected value here comes from mistral-common itself, run on the same conversation: nothing is
hard-coded, so a change in either implementation shows up as a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mixchat.chat_template import (
    ChatTemplateError,
    Message,
    encode_chat,
    encode_reply,
    encode_turn,
    reply_suffix,
)
from mixchat.tokenizer import Tokenizer, load_tokenizer

mistral_common = pytest.importorskip("mistral_common")
from helpers.tekken_files import DATA, NEMO_TEKKEN, derived_tekken  # noqa: E402
from mistral_common.protocol.instruct.messages import (  # noqa: E402
    AssistantMessage,
    SystemMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.protocol.instruct.validator import ValidationMode  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

# v2 is not a layout of its own: for plain chat it must come out exactly as v3. Tekken v3 is Mistral Nemo's
# file; the v7+ Tekken files are derived from the real vocabulary (see helpers/tekken_files.py).
FILES = {
    "v1": "tokenizer.model.v1",
    "v2": "mistral_instruct_tokenizer_240216.model.v2",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
    "v7": "mistral_instruct_tokenizer_241114.model.v7",
    "v7-m1": "mistral_instruct_tokenizer_241114.model.v7m1",  # multimodal extras; the same text layout
    "v3-tekken": str(NEMO_TEKKEN),
    "v7-tekken": "derived",
    "v11-tekken": "derived",
    "v13-tekken": "derived",
}

U, A, S = "user", "assistant", "system"

CONVERSATIONS: dict[str, list[tuple[str, str]]] = {
    "one_turn": [(U, "Hello, who are you?")],
    "one_turn_system": [(S, "You are a terse assistant."), (U, "Name a prime.")],
    "three_turns": [
        (U, "What is 2+2?"),
        (A, "4."),
        (U, "And times 3?"),
        (A, "12, since 4 × 3 = 12."),
        (U, "Thanks!"),
    ],
    "three_turns_system": [
        (S, "Answer in one line."),
        (U, "Capital of France?"),
        (A, "Paris."),
        (U, "Of Japan?"),
        (A, "Tokyo."),
        (U, "Of Peru?"),
    ],
    "non_ascii": [
        (S, "Réponds en français, s'il te plaît."),
        (U, "Grüße, 東京 🚀"),
        (A, "Bonjour ! 東京 est une ville 🌸 magnifique."),
        (U, "Ελληνικά; Привет! ¿Qué tal? नमस्ते"),
    ],
    "whitespace": [
        (U, "  leading spaces and trailing  "),
        (A, " reply with a leading space and trailing spaces   "),
        (U, "line one\nline two\n\n\tindented\n"),
        (A, "ends with a newline\n"),
        (U, "   "),
    ],
    "several_system_messages": [
        (S, "First rule."),
        (S, ""),
        (S, "Second rule.\n"),
        (U, "Go."),
        (A, "Going."),
        (U, "Again."),
    ],
    "merged_runs": [
        (U, "part one"),
        (U, ""),
        (U, "part two"),
        (A, "answer one"),
        (A, "answer two"),
        (U, "next"),
    ],
    "system_between_users": [(U, "first"), (S, "late system prompt"), (U, "second")],
    "empty_user": [(U, "")],
    "starts_with_assistant": [(A, "I speak first."), (U, "Fine.")],
    "only_system": [(S, "Only a system prompt.")],
    "open_reply": [(S, "Be brief."), (U, "Count to three."), (A, "One, two,")],
}


def _ours(conversation: list[tuple[str, str]]) -> list[Message]:
    return [Message(role, content) for role, content in conversation]


def _theirs(conversation: list[tuple[str, str]], *, close_final_reply: bool = False) -> list:
    out = []
    for i, (role, content) in enumerate(conversation):
        last = i == len(conversation) - 1
        if role == U:
            out.append(UserMessage(content=content))
        elif role == S:
            out.append(SystemMessage(content=content))
        else:
            out.append(AssistantMessage(content=content, prefix=last and not close_final_reply))
    return out


@pytest.fixture(scope="module", params=sorted(FILES))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def path(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if FILES[kind] == "derived":
        return derived_tekken(kind.split("-")[0], tmp_path_factory.mktemp(kind))
    return DATA / FILES[kind]


@pytest.fixture(scope="module")
def version(kind: str) -> str:
    """The template version (v2 lays out as v3)."""
    return kind.split("-")[0]


@pytest.fixture(scope="module")
def tok(path: Path) -> Tokenizer:
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def reference(path: Path) -> MistralTokenizer:
    return MistralTokenizer.from_file(str(path))


def test_detected_version(tok: Tokenizer, version: str) -> None:
    assert tok.version == ("v3" if version == "v2" else version)


def _reference_ids(reference: MistralTokenizer, conversation: list[tuple[str, str]]) -> list[int]:
    request = ChatCompletionRequest(messages=_theirs(conversation))
    return reference.encode_chat_completion(request).tokens


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_matches_mistral_common(tok: Tokenizer, reference: MistralTokenizer, name: str) -> None:
    conversation = CONVERSATIONS[name]
    assert encode_chat(tok, _ours(conversation)) == _reference_ids(reference, conversation)


def test_closed_final_reply_matches_finetuning_layout(tok: Tokenizer, path: Path) -> None:
    reference = MistralTokenizer.from_file(str(path), mode=ValidationMode.finetuning)
    conversation = [*CONVERSATIONS["non_ascii"], (A, "Je ne sais pas.  ")]
    expected = reference.encode_chat_completion(
        ChatCompletionRequest(messages=_theirs(conversation, close_final_reply=True))
    ).tokens
    assert encode_chat(tok, _ours(conversation), close_final_reply=True) == expected
    # Left open, the same conversation only lacks the EOS (and nothing else moves).
    assert encode_chat(tok, _ours(conversation)) == expected[:-1]


def test_version_layouts(tok: Tokenizer, version: str) -> None:
    ids = encode_chat(tok, [Message(U, "hi")])
    if version == "v1":
        assert tok.inst_id is None
        assert tok.decode(ids) == "[INST] hi [/INST]"
    else:
        assert ids[1] == tok.inst_id and ids[-1] == tok.inst_end_id
        assert tok.decode(ids) == "hi"


def _incremental(tok: Tokenizer, conversation: list[tuple[str, str]], system: str | None) -> list[int]:
    ids: list[int] = []
    for role, content in conversation:
        if role == U:
            ids += encode_turn(tok, content, first=not ids, system=system)
        else:
            ids += encode_reply(tok, content) + reply_suffix(tok)
    return ids


@pytest.mark.parametrize("name", ["one_turn", "three_turns", "non_ascii", "whitespace"])
def test_incremental_turns_equal_whole_conversation(tok: Tokenizer, reference: MistralTokenizer, name: str) -> None:
    conversation = [(role, text) for role, text in CONVERSATIONS[name] if role != S]
    # Each prefix ending in a user turn is a prompt the session prefills on top of its cache.
    for end in range(1, len(conversation) + 1):
        prefix = conversation[:end]
        if prefix[-1][0] != U:
            continue
        expected = _reference_ids(reference, prefix)
        assert _incremental(tok, prefix, None) == expected
        assert encode_chat(tok, _ours(prefix)) == expected


def test_incremental_system_prompt_stays_in_first_turn(
    tok: Tokenizer, reference: MistralTokenizer, version: str
) -> None:
    system, conversation = "Answer in one line.", CONVERSATIONS["three_turns_system"][1:]
    ids = _incremental(tok, conversation, system)
    if version not in ("v2", "v3"):
        # v1 puts the system prompt in the first turn too, v7+ keeps it where it stands (the start):
        # identical to the whole-conversation layout.
        assert ids == _reference_ids(reference, [(S, system), *conversation])
    else:
        # v3 would move it to the last turn; ours equals mistral-common with it written into turn one.
        folded = [(U, system + "\n\n" + conversation[0][1]), *conversation[1:]]
        assert ids == _reference_ids(reference, folded)
    # For a single turn both placements coincide with mistral-common's.
    assert encode_turn(tok, "Hi", first=True, system=system) == _reference_ids(reference, [(S, system), (U, "Hi")])


def test_later_turn_ignores_system_and_has_no_bos(tok: Tokenizer) -> None:
    later = encode_turn(tok, "next", first=False, system="ignored")
    assert later == encode_turn(tok, "next", first=False)
    assert tok.bos_id not in later
    assert encode_turn(tok, "next", first=True) == [tok.bos_id, *later]


def test_empty_reply_is_just_eos(tok: Tokenizer) -> None:
    # mistral-common refuses an empty assistant message; a model that stops at once produces one.
    ids = encode_chat(tok, _ours([(U, "a"), (A, ""), (U, "b")]))
    assert ids == _incremental(tok, [(U, "a"), (A, ""), (U, "b")], None)


def test_bad_conversations_are_refused() -> None:
    with pytest.raises(ChatTemplateError, match="role"):
        Message("robot", "beep")
    tok = load_tokenizer(DATA / FILES["v3"])
    with pytest.raises(ChatTemplateError, match="at least one message"):
        encode_chat(tok, [])
