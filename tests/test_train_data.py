"""Corpus preparation, tokenizer training and v3 packing for the built-in model, on a tiny fake corpus.

The fake corpus mimics the real files' formats (xz, paragraph per dialogue, `A:`/`B:`, `User:`/
`Assistant:`, WordNet lines), so the parsers, the placeholder handling and the whole build run as they do
on the real data, in a few seconds.
"""

from __future__ import annotations

import json
import lzma
import os
import re
from pathlib import Path

import pytest
import torch

from mixchat.train.corpus import (
    FIRST_NAMES,
    PLACEHOLDER_RE,
    ContextStats,
    Dialogue,
    load_corpus,
    messages_to_dialogues,
    read_xz,
    rephrase_definition,
    split,
    summarize,
    wordnet_dialogues,
)
from mixchat.train.heldout import HELDOUT_WORDS, IDENTITY_PROMPTS, UNKNOWN_COUNTRIES
from mixchat.train.mix import Mix, build_mix
from mixchat.train.spm import EOS_ID, INST_END_ID, INST_ID, V3_CONTROL_SYMBOLS, load_processor, train_tokenizer
from mixchat.train.synthetic import heldout_recall
from mixchat.train.tokens import (
    build_dataset,
    encode_dialogue_v3,
    load_packed,
    pack_bits,
    pack_examples,
    packed_info,
    unpack_bits,
)
from mixchat.train.wordnet import (
    NEXT_QUESTIONS,
    QUESTIONS,
    build_items,
    definition_dialogues,
    load_lexicon,
    taught_senses,
)

TOPICS = ["cooking", "hiking", "jazz music", "painting", "chess", "gardening", "running", "old movies"]
PLACES = ["Portland", "Denver", "Boston", "Austin", "Seattle", "Chicago"]

PLACEHOLDER_DIALOGUE = """A: Hi, I'm [user 1's name]. What's your name?
B: Nice to meet you, [name]. I'm [name].
A: Great to meet you too, [user 2]!
B: Do you like music?"""
ROUND_PLACEHOLDER_DIALOGUE = """A: Hello, my name is (User 1's name). What's yours?
B: Hi (User 1's name), my name is (name).
A: Nice to meet you. Do you like jazz music?
B: I do! It was nice talking, User 1."""
DROPPED_DIALOGUE = """A: Hi! I live in [city].
B: Cool, I have never been there."""


def _write_xz(path: Path, text: str) -> None:
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def _persona_text() -> str:
    items = [PLACEHOLDER_DIALOGUE, ROUND_PLACEHOLDER_DIALOGUE, DROPPED_DIALOGUE]
    for i in range(48):
        topic, place = TOPICS[i % len(TOPICS)], PLACES[i % len(PLACES)]
        other = TOPICS[(i * 3 + 1) % len(TOPICS)]
        items.append(
            f"A: Hi! How are you doing today?\n"
            f"B: I'm doing well, thanks for asking. I just got back from {place}.\n"
            f"A: Oh nice! What do you like to do for fun?\n"
            f"B: I really enjoy {topic}, and sometimes {other} with my friends.\n"
            f"A: That sounds like a lot of fun. I have never tried {topic} before.\n"
            f"B: You should! It's a great way to relax after work.\n"
            f"B: Number {i * 37} is my lucky number, by the way."
        )
    return "\n\n".join(items) + "\n"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    _write_xz(d / "synthetic_persona_chat.txt.xz", _persona_text())
    _write_xz(
        d / "chitchat.txt.xz",
        "A: hey whats up\nB: not much, just studying for finals lol\nA: same here haha\n"
        "B: good luck with that!\n\nA: is anyone there?\n\n"
        "A: do you like pizza?\nB: yes!! pepperoni is the best\n",
    )
    _write_xz(
        d / "chatterbot_english.txt.xz",
        "A: What is AI?\nB: Artificial intelligence is the science of making machines that think.\n\n"
        "A: can you write a stack in Python?\nB: Here's a stack:\n\n```\nclass Stack:\n\n    pass\n```\n\n"
        "A: Are you sentient?\nB: Sort of.\n",
    )
    _write_xz(
        d / "taskmaster4_coffee.txt.xz",
        "User: Can I get a mocha please?\nAssistant: Sure, does the order on the screen look right?\n"
        "User: Yes.\nAssistant: Great, it will be ready in a few minutes.\n\n"
        "User: What's in a cold brew?\nAssistant: It's coffee concentrate and ice.\n",
    )
    _write_xz(d / "wordnet_glosses.txt.xz", "".join(f"{line}\n" for line, _ in WORDNET))
    _write_wordnet_index(d / "wordnet")
    _write_xz(d / "quiz_facts.txt.xz", QUIZ)
    _write_xz(d / "country_facts.txt.xz", COUNTRY)
    return d


# Fake WordNet: (corpus line, words of the synset). Lines are listed per part of speech in "file order"
# (nouns, then verbs), which is NOT sense order: "doctor" is a children's game first here, as in the real
# file. The index written below gives the real order, sense counts and extra synset members ("auto").
WORDNET: list[tuple[str, tuple[str, ...]]] = [
    ("doctor (noun): children pretend they are at the physician's office", ("doctor",)),
    ('music (noun): an artistic form of auditory communication; "she enjoys music"', ("music",)),
    ("music (noun): the sounds produced by singers or musical instruments", ("music",)),
    ("in (noun): a unit of length equal to one twelfth of a foot", ("in",)),
    ("Portland (noun): a port city in northwestern Oregon", ("portland",)),
    ('doctor (noun): a licensed medical practitioner; "I went to see my doctor"', ("doctor", "doc")),
    ("car (noun): a motor vehicle with four wheels", ("car", "auto")),
    ('river (noun): a large natural stream of water; "the river was navigable"', ("river",)),
    ("bread (noun): food made from dough of flour or meal and baked", ("bread", "breadstuff")),
    ("cooking (noun): the act of preparing something as food by the application of heat", ("cooking",)),
    ("Dakar (noun): the capital and largest city of Senegal", ("dakar",)),
    ('relax (verb): become less tense, rest, or take one\'s ease; "He relaxed in the hot tub"', ("relax",)),
    ("cook (verb): prepare a hot meal", ("cook",)),
]
SENSE_COUNTS = {("doctor", "n", 1): 73, ("doctor", "n", 2): 1, ("music", "n", 1): 51, ("music", "n", 2): 12,
                ("relax", "v", 1): 20, ("car", "n", 1): 40, ("cooking", "n", 1): 5}  # fmt: skip
SENSE_NUMBERS = {("doctor", 0): 2, ("doctor", 5): 1}  # (word, line) -> sense number where not file order


def _write_wordnet_index(folder: Path) -> None:
    """index.noun/verb/adj/adv and cntlist.rev for `WORDNET`: offsets rise with the lines of each part of
    speech (as byte offsets in WordNet's data files do), each word's synsets listed in sense order."""
    folder.mkdir()
    entries: dict[tuple[str, str], list[tuple[int, int]]] = {}  # (word, pos) -> [(sense number, offset)]
    for k, (line, words) in enumerate(WORDNET):
        pos = "n" if "(noun)" in line else "v"
        for w in words:
            senses = entries.setdefault((w, pos), [])
            senses.append((SENSE_NUMBERS.get((w, k), len(senses) + 1), 1000 + 100 * k))
    for pos, name in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
        lines = ["  1 This software and database is being provided to you, the LICENSEE, by  "]
        for (w, p), senses in sorted(entries.items()):
            if p == pos:
                offs = " ".join(f"{o:08d}" for _, o in sorted(senses))
                lines.append(f"{w} {p} {len(senses)} 0 {len(senses)} 0 {offs}  ")
        _write_xz(folder / f"index.{name}.xz", "\n".join(lines) + "\n")
    cnt = [f"{w}%{'1' if p == 'n' else '2'}:00:00:: {n} {c}" for (w, p, n), c in SENSE_COUNTS.items()]
    (folder / "cntlist.rev").write_text("\n".join(cnt) + "\n")


QUIZ = """User: What is the capital of Japan?
Assistant: The capital of Japan is Tokyo.

User: What is Tokyo the capital of?
Assistant: Tokyo is the capital of Japan.

User: What is the capital of Senegal?
Assistant: The capital of Senegal is Dakar.

User: What is the chemical symbol for gold?
Assistant: The chemical symbol for gold is Au.

"""
COUNTRY = """User: What's the capital city of Peru?
Assistant: Lima is the capital of Peru.
User: Which region of the world is Peru in?
Assistant: Peru is in South America, a subregion of the Americas.

User: What's the capital city of Moldova?
Assistant: The capital of Moldova is Chișinău.

"""


@pytest.fixture(scope="module")
def dialogues(corpus_dir: Path) -> list[Dialogue]:
    return load_corpus(corpus_dir, wordnet_min_count=1)


@pytest.fixture(scope="module")
def tokenizer_path(dialogues: list[Dialogue], tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, _ = split(dialogues)
    return train_tokenizer(train, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=400)


def test_sources_are_parsed(dialogues: list[Dialogue]) -> None:
    counts = summarize(dialogues)
    assert set(counts) == {"persona", "chitchat", "chatterbot", "coffee", "wordnet", "total"}
    chatter = [d.turns for d in dialogues if d.source == "chatterbot"]
    # the code answer (with blank lines inside its fence) is dropped, not split into bogus items
    assert sorted(t[0][0] for t in chatter) == ["Are you sentient?", "What is AI?"]
    # a chat with no reply is dropped; a trailing unanswered user line is dropped
    chit = [d.turns for d in dialogues if d.source == "chitchat"]
    assert [("do you like pizza?", "yes!! pepperoni is the best")] in chit
    coffee = next(d for d in dialogues if d.source == "coffee" and len(d.turns) == 2)
    assert coffee.turns[1] == ("Yes.", "Great, it will be ready in a few minutes.")
    # WordNet: common lower-case lemmas only, never closed-class words ("in") or proper nouns
    words = [d for d in dialogues if d.source == "wordnet"]
    asked = " ".join(d.turns[0][0] for d in words)
    assert "music" in asked and "relax" in asked
    assert " in " not in f" {asked} " and "Portland" not in asked
    music = next(d for d in words if "music" in d.turns[0][0])
    # both senses are taught, one per turn, each restating its gloss (and example, where there is one)
    answers = " ".join(a for _, a in music.turns)
    assert len(music.turns) == 2 and "auditory communication" in answers and "musical instruments" in answers
    assert 'For example: "she enjoys music".' in answers


def test_everyday_sense_is_picked_from_chat_context() -> None:
    """The sense whose gloss words keep company with the word in chat comes first, whatever the file order."""
    chat = [
        Dialogue([("Want a cup of coffee?", "Yes, I drink coffee every morning.")], "persona"),
        Dialogue([("Is the coffee hot?", "Hot coffee in a big cup, my favourite drink.")], "persona"),
        Dialogue([("I had coffee with milk.", "I like a coffee drink with milk too.")], "persona"),
        Dialogue([("A cup of tea?", "No, I drink milk.")], "persona"),
        Dialogue([("Look at the trees.", "The trees and shrubs are green.")], "persona"),
    ]
    wordnet = (
        "coffee (noun): any of several small trees and shrubs yielding coffee beans\n"
        'coffee (noun): a beverage made with milk, served hot in a cup; "a cup of coffee"\n'
    )
    (d,) = wordnet_dialogues(wordnet, chat, min_count=1)
    assert "beverage" in d.turns[0][1] and "shrubs" in d.turns[1][1]
    ctx = ContextStats(chat, ["coffee"])
    assert ctx.relatedness("coffee", "a hot drink in a cup") > ctx.relatedness("coffee", "trees and shrubs") == 0.0


def test_definition_repeats_rotate_the_question_phrasing() -> None:
    """Every phrasing of the question reaches every word, the answers stay word for word, and chat is untouched."""
    chat = [Dialogue([("I love my dog.", "My dog loves me too.")], "persona")] * 3
    wordnet = (
        'love (noun): a strong positive emotion of regard and affection; "his love for his work"\n'
        'love (verb): have a great affection or liking for; "I love French food"\n'
    )
    (d,) = wordnet_dialogues(wordnet, chat, min_count=1)
    variants = [rephrase_definition(d, r) for r in range(8)]
    firsts = {v.turns[0][0] for v in variants}
    assert len(firsts) == 8 and all("love" in q for q in firsts)
    assert "What does love mean?" in firsts
    assert len({v.turns[1][0] for v in variants}) == 4  # the follow-up rotates through its own phrasings
    assert all([a for _, a in v.turns] == [a for _, a in d.turns] for v in variants)
    assert rephrase_definition(d, 0) == d
    assert rephrase_definition(chat[0], 5) == chat[0]


def test_placeholders_replaced_or_dropped(dialogues: list[Dialogue]) -> None:
    persona = [d for d in dialogues if d.source == "persona"]
    assert all("[" not in text for d in persona for turn in d.turns for text in turn)
    assert not any("[city]" in t or "I live in" in t for d in persona for turn in d.turns for t in turn)
    intro = next(d for d in persona if "What's your name?" in d.text())
    if intro.turns[0][0].startswith("Hi, I'm"):  # A plays the user
        (u1, a1), (u2, _) = intro.turns
    else:  # role swap: B opened, so A's first line was dropped
        pytest.skip("this dialogue was role-swapped by its hash")
    name_a = u1.removeprefix("Hi, I'm ").split(".")[0]
    name_b = a1.rsplit("I'm ", 1)[1].rstrip(".")
    assert name_a in FIRST_NAMES and name_b in FIRST_NAMES and name_a != name_b
    # "[name]" after "I'm" is the speaker's own name, elsewhere the other speaker's
    assert a1 == f"Nice to meet you, {name_a}. I'm {name_b}."
    assert u2 == f"Great to meet you too, {name_b}!"


def test_role_swap_and_merging() -> None:
    msgs = [(0, "Hi there"), (1, "hello"), (1, "how are   you?"), (0, "fine"), (1, "cool")]
    (d,) = messages_to_dialogues(msgs, "x")
    assert d.turns == [("Hi there", "hello how are you?"), ("fine", "cool")]
    (d,) = messages_to_dialogues(msgs, "x", skip_first=True)
    assert d.turns == [("hello how are you?", "fine")]
    # an unclippable long turn splits the dialogue instead of truncating mid-sentence
    long = "word " * 100
    msgs = [(0, "Why?"), (1, "Because."), (0, long), (1, "I see."), (0, "Do you?"), (1, "Yes.")]
    parts = messages_to_dialogues(msgs, "x")
    assert [p.turns for p in parts] == [[("Why?", "Because.")], [("I see.", "Do you?")]]
    # one-character answers are fine, messages without letters or digits are not
    (d,) = messages_to_dialogues([(0, "How many sides does a square have?"), (1, "4"), (1, "...")], "x")
    assert d.turns == [("How many sides does a square have?", "4")]
    # a sentence typed one letter per message is noise
    assert messages_to_dialogues([(i % 2, c) for i, c in enumerate("hello there")], "x") == []


def test_split_deterministic_and_disjoint(dialogues: list[Dialogue]) -> None:
    train, held = split(dialogues, per_10k=3000)
    train2, held2 = split(list(reversed(dialogues)), per_10k=3000)
    assert held and train
    assert {d.text() for d in held} == {d.text() for d in held2}
    assert {d.text() for d in train} == {d.text() for d in train2}
    assert not {d.text() for d in train} & {d.text() for d in held}
    assert len(train) + len(held) == len(dialogues) == len({d.text() for d in dialogues})


def test_tokenizer_round_trips_and_layout(tokenizer_path: Path) -> None:
    sp = load_processor(tokenizer_path)
    assert sp.vocab_size() == 400
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert sp.id_to_piece(3) == "[INST]" and sp.id_to_piece(4) == "[/INST]"
    for i, piece in enumerate(V3_CONTROL_SYMBOLS, start=3):
        assert sp.is_control(i) and sp.piece_to_id(piece) == i
    samples = [
        "Hello there, how are you doing today?",
        "  two  spaces,\ttabs and\nnewlines ",
        "Numbers 12345 and [INST] as plain text",
        "naïve café, Zürich — 日本語 🙂 ¿qué?",
    ]
    for text in samples:
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        assert 0 not in ids  # byte fallback: never <unk>
        assert not {3, 4} & set(ids)  # control tokens never come out of plain text
    assert [sp.id_to_piece(i) for i in sp.encode("2024")][-4:] == ["2", "0", "2", "4"]  # split_digits


def test_tokenizer_is_reproducible(dialogues: list[Dialogue], tmp_path: Path, tokenizer_path: Path) -> None:
    train, _ = split(dialogues)
    again = train_tokenizer(train, tmp_path / "tokenizer", vocab_size=400)
    assert again.read_bytes() == tokenizer_path.read_bytes()


def test_loss_mask_is_replies_and_eos(tokenizer_path: Path) -> None:
    sp = load_processor(tokenizer_path)
    turns = [("Hi! How are you?", "I'm fine, thanks."), ("What's your hobby?", "I love chess.")]
    ids, mask = encode_dialogue_v3(sp, Dialogue(turns))
    expected: list[int] = [1]
    expected_mask: list[bool] = [False]
    for user, reply in turns:
        prompt, answer = [3, *sp.encode(user), 4], [*sp.encode(reply), 2]
        expected += prompt + answer
        expected_mask += [False] * len(prompt) + [True] * len(answer)
    assert ids == expected and mask == expected_mask
    assert sp.id_to_piece(ids[2]).startswith("▁")  # the dummy-prefix space after [INST]
    assert sp.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "I'm fine, thanks. I love chess."
    # a plain ids function works too
    assert encode_dialogue_v3(sp.encode, turns) == (ids, mask)


def test_matches_mistral_common(tokenizer_path: Path, tmp_path: Path) -> None:
    mc = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest

    v3 = tmp_path / "tokenizer.model.v3"
    v3.write_bytes(tokenizer_path.read_bytes())
    tok = mc.MistralTokenizer.from_file(str(v3))
    turns = [("Hi there!", "Hello, how can I help?"), ("Tell me a joke.", "Why did the chess player smile?")]
    messages = [m for u, a in turns for m in (UserMessage(content=u), AssistantMessage(content=a))]
    reference = tok.instruct_tokenizer.encode_instruct(InstructRequest(messages=messages)).tokens
    assert encode_dialogue_v3(load_processor(tokenizer_path), turns)[0] == reference


def test_packing_keeps_mask_aligned() -> None:
    a = (list(range(10, 20)), [False] * 4 + [True] * 6)
    b = ([1, 3, 30, 4, 31, 2], [False] * 4 + [True] * 2)
    tokens, mask = pack_examples([a, b], seq_len=4)
    stream = a[0] + b[0]
    stream_mask = a[1] + b[1]
    assert tokens.shape == mask.shape == (4, 5)  # ceil((16 - 1) / 4) rows of L + 1
    for r in range(tokens.shape[0]):
        for j in range(5):
            k = r * 4 + j
            assert tokens[r, j] == (stream[k] if k < len(stream) else 2)
            assert bool(mask[r, j]) == (stream_mask[k] if k < len(stream) else False)
    assert torch.equal(tokens[:-1, -1], tokens[1:, 0])  # rows overlap by one token
    bits = torch.rand(3, 513) > 0.5
    assert torch.equal(unpack_bits(pack_bits(bits), 513), bits)


def test_build_dataset(corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "built"
    stats = build_dataset(corpus_dir, out, vocab_size=400, seq_len=32, scale=0.02)
    assert {p.name for p in out.iterdir()} == {
        "tokenizer.model", "train.safetensors", "heldout.safetensors", "stats.json", "taught_words.json",
    }  # fmt: skip
    assert json.loads((out / "stats.json").read_text()) == stats
    sp = load_processor(out / "tokenizer.model")
    for name in ("train", "heldout"):
        s = stats["splits"][name]
        tokens, mask = load_packed(out / f"{name}.safetensors")
        assert tokens.dtype == torch.int64 and mask.dtype == torch.bool and tokens.shape == (s["rows"], 33)
        assert int(mask[0, 0]) + int(mask[:, 1:].sum()) == s["loss_tokens"]  # each token once
        assert sum(v["tokens"] for v in stats["sources"][name].values()) == s["tokens"]
        if s["dialogues"]:
            assert sp.decode(tokens[0].tolist()).strip()
    assert packed_info(out / "train.safetensors")["split"] == "train"
    # no pickle anywhere: safetensors files start with their JSON header length + "{"
    assert (out / "train.safetensors").read_bytes()[8:9] == b"{"
    # a rebuild gives byte-identical files
    again = build_dataset(corpus_dir, tmp_path / "again", vocab_size=400, seq_len=32, scale=0.02)
    assert again["splits"] == stats["splits"]
    for name in ("tokenizer.model", "train.safetensors", "heldout.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_training_smoke_run_end_to_end(corpus_dir: Path, tmp_path: Path) -> None:
    """The CPU smoke run of the real training code: corpus -> tokenizer -> data -> steps -> a loadable model."""
    import csv
    import math

    from mixchat.cli.main import main
    from mixchat.engine import SequenceFinished
    from mixchat.runtime import load_runtime
    from mixchat.sampling import SamplingSettings

    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--corpus",
            str(corpus_dir),
            "--out",
            str(out),
            "--preset",
            "smoke",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--vocab-size",
            "400",
            "--seq-len",
            "32",
            "--device",
            "cpu",
            "--scale",
            "0.02",
        ]
    )
    assert rc == 0
    with open(out / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(math.isfinite(float(r["train_loss"])) and float(r["train_loss"]) > 0 for r in rows)
    assert float(rows[0]["aux_loss"]) > 0  # the router's load-balancing loss is part of the objective
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"] == 4 * 4 * 32
    model_dir = out / "model"
    assert {p.name for p in model_dir.iterdir()} == {"params.json", "consolidated.safetensors", "tokenizer.model"}
    rt = load_runtime(model_dir, device="cpu", dtype="float32")
    assert rt.model.args.moe is not None and rt.tokenizer.version == "v3"
    events = list(
        rt.engine.generate([rt.tokenizer.encode("hello", bos=True)], SamplingSettings(temperature=0, max_tokens=3))
    )
    assert isinstance(events[-1], SequenceFinished) and 1 <= len(events[-1].ids) <= 3


# ---------------------------------------------------------------------------------------------------------
# v6: the mix (WordNet in sense order, fact files, templates, held-out sets)


@pytest.fixture(scope="module")
def mix(corpus_dir: Path) -> Mix:
    return build_mix(corpus_dir, scale=0.02)


def _texts(dialogues: list[Dialogue]) -> list[str]:
    return [t for d in dialogues for turn in d.turns for t in turn]


def test_sense_order_comes_from_the_wordnet_index(corpus_dir: Path) -> None:
    """The index's order wins over the file's ("doctor" is a physician first, the game second), words that
    are not a synset's head word get its gloss ("auto"), and counts come from cntlist.rev."""
    lex = load_lexicon(read_xz(corpus_dir / "wordnet_glosses.txt.xz"), corpus_dir / "wordnet")
    assert lex.source == "wordnet-index"
    doctor = lex.senses["doctor"]
    assert "medical practitioner" in doctor[0].gloss and doctor[0].count == 73 and "pretend" in doctor[1].gloss
    assert lex.senses["auto"][0].gloss == lex.senses["car"][0].gloss
    assert [s.gloss for s in taught_senses(lex.senses["music"])] == [s.gloss for s in lex.senses["music"]]
    # without the index the file order is all there is, and the lexicon says so
    plain = load_lexicon(read_xz(corpus_dir / "wordnet_glosses.txt.xz"), None)
    assert plain.source == "file" and "pretend" in plain.senses["doctor"][0].gloss


def test_index_that_does_not_match_the_corpus_is_refused(corpus_dir: Path, tmp_path: Path) -> None:
    text = read_xz(corpus_dir / "wordnet_glosses.txt.xz").replace("river (noun)", "lake (noun)")
    with pytest.raises(ValueError, match="do not match the index"):
        load_lexicon(text, corpus_dir / "wordnet")


def test_heldout_words_are_never_defined(mix: Mix) -> None:
    """No training turn asks about a held-out word or gives one of its glosses, under its own name or a
    synonym's ("breadstuff" shares bread's synset); their definitions are in the held-out split instead."""
    bread_gloss, river_gloss = "food made from dough", "large natural stream of water"
    train = _texts(mix.train)
    assert not [t for t in train if bread_gloss in t or river_gloss in t]
    questions = [u for d in mix.train for u, _ in d.turns]
    for w in HELDOUT_WORDS:
        assert not [q for q in questions if re.search(rf"\b{w}\b", q) and "mean" in q], w
    assert "breadstuff" not in mix.taught_words and "bread" not in mix.taught_words
    held = " ".join(_texts(mix.heldout))
    assert bread_gloss in held and river_gloss in held


def test_definition_dialogues_hold_several_words(mix: Mix) -> None:
    """Multi-word dialogues exist, and a later word's question is answered about that word, not the first."""
    defs = [d for d in mix.train if d.source == "wordnet"]
    later = []
    for d in defs:
        first_word = None
        for q, a in d.turns:
            m = re.search(r"\b(doctor|music|relax|cooking|cook|car|auto|doc)\b", q)
            if m and first_word is None:
                first_word = m[1]
            elif m and m[1] != first_word:
                later.append((m[1], a))
    assert later, "no dialogue defines a second word"
    assert all(a.startswith((w, f"As a noun, {w}", f"As a verb, {w}")) for w, a in later)


def test_follow_up_is_about_the_last_word(corpus_dir: Path) -> None:
    """ "Does it have another meaning?" after a second word gives that word's next sense."""
    lex = load_lexicon(read_xz(corpus_dir / "wordnet_glosses.txt.xz"), corpus_dir / "wordnet")
    items = build_items(lex, ["car", "music"], set())
    seen = False
    for repeat in range(40):
        for d in definition_dialogues(items, repeat):
            words = [w for q, _ in d.turns for w in ("car", "music") if w in q]
            if words[:2] == ["car", "music"] and len(d.turns) == 3:
                assert d.turns[2][1].startswith("music can also mean") and "sounds produced" in d.turns[2][1]
                seen = True
    assert seen


def test_no_placeholders_in_the_built_dataset(corpus_dir: Path, tmp_path: Path) -> None:
    """Decoded train and held-out tokens hold no template slot; the slots in the fixture became names."""
    build_dataset(corpus_dir, tmp_path / "b", vocab_size=400, seq_len=64, scale=0.02)
    sp = load_processor(tmp_path / "b" / "tokenizer.model")
    text = ""
    for name in ("train", "heldout"):
        tokens, _ = load_packed(tmp_path / "b" / f"{name}.safetensors")
        text += sp.decode(tokens[:, 1:].reshape(-1).tolist())
    assert PLACEHOLDER_RE.search(_persona_text())  # the fixture has them ...
    assert not PLACEHOLDER_RE.search(text)  # ... the dataset has none
    assert "(name)" not in text and "User 1" not in text and "[" not in text
    names = "|".join(FIRST_NAMES)
    assert re.search(rf"Hi ({names}), my name is ({names})\.", text)  # filled, not dropped


@pytest.mark.parametrize(
    "text, slot",
    [("(name)", True), ("[user 1's name]", True), ("(dog's name)", True), ("[band name]", True),
     ("(user 1 location)", True), ("[User 2]", True), ("Bye, User 1", True), ("(USER 2's name)", True),
     ("(trade name Ritalin)", False), ("(especially a person's name)", False), ("(or their names)", False),
     ("(named after him)", False), ("a user 12 thing", False), ("[?]", False)],
)  # fmt: skip
def test_placeholder_pattern(text: str, slot: bool) -> None:
    """Template slots match; WordNet's own brackets that mention names do not (they are real text)."""
    assert bool(PLACEHOLDER_RE.search(text)) == slot


def test_heldout_recall_dialogues_are_not_trained(mix: Mix) -> None:
    held = heldout_recall()
    assert len(held) == 20 and len({f.value for _, f in held}) > 5
    train = "\n".join(d.text() for d in mix.train if d.source == "recall")
    assert train
    for d, fact in held:
        assert fact.value in d.turns[-1][1] and len(d.turns) == 4  # asked two turns after it was told
        assert fact.statement not in train and not re.search(rf"\b{re.escape(fact.value)}\b", train), fact
        assert d in mix.heldout


def test_capitals_stay_and_unknown_countries_go(mix: Mix) -> None:
    train = "\n".join(d.text() for d in mix.train)
    assert "The capital of Japan is Tokyo." in train and "Lima is the capital of Peru." in train
    for country, capital in UNKNOWN_COUNTRIES:
        assert country not in train and capital not in train
    capitals = [a for d in mix.train if d.source == "capitals" for _, a in d.turns]
    unknown = [a for a in capitals if re.search("don't know|not sure", a)]
    assert unknown  # invented places get "I don't know"


def test_identity_and_refusals_are_taught(mix: Mix) -> None:
    by_q = {q: a for d in mix.train for q, a in d.turns}
    assert "mixchat" in by_q["Who are you?"]
    assert not set(IDENTITY_PROMPTS[1:]) & set(by_q)  # the evaluation's rephrasings are never trained
    refusals = [a for d in mix.train if d.source == "refusal" for _, a in d.turns]
    assert any("code" in a for a in refusals) and any("calculator" in a for a in refusals)
    assert any("news" in a for a in refusals) and any(re.fullmatch(r"\d+ plus \d+ is \d+\.", a) for a in refusals)


BUILT = Path(os.environ.get("MIXCHAT_BUILT_DATASET", ".data/v6"))


@pytest.mark.skipif(not (BUILT / "train.safetensors").is_file(), reason="no built v6 dataset (.data/v6)")
def test_real_built_dataset_properties() -> None:
    """On the real built dataset, where one is present: no placeholders anywhere, no held-out word asked
    about, no held-out recall dialogue, several words per definition dialogue."""
    sp = load_processor(BUILT / "tokenizer.model")
    tokens, _ = load_packed(BUILT / "train.safetensors")
    text = sp.decode(tokens[:, 1:].reshape(-1).tolist())
    assert not PLACEHOLDER_RE.search(text)
    for _, fact in heldout_recall():
        assert fact.statement not in text
    for country, capital in UNKNOWN_COUNTRIES:  # names as the fact files write them, accents and all
        assert country.removeprefix("the ") not in text and capital not in text, country
    # every user turn, decoded on its own: the ids between [INST] and [/INST]
    stream = tokens[:, 1:].reshape(-1)
    starts = (stream == INST_ID).nonzero().flatten().tolist()
    ends = (stream == INST_END_ID).nonzero().flatten().tolist()
    ids = stream.tolist()
    pairs = list(zip(starts, ends, strict=False))
    user_turns = sp.decode([ids[a + 1 : b] for a, b in pairs])
    assert len(user_turns) > 100_000
    asked = {t.format(w=w) for t in (*QUESTIONS, *NEXT_QUESTIONS) for w in HELDOUT_WORDS}
    assert not asked & set(user_turns)
    # a later word of a definition dialogue is answered about that word
    later = [
        re.compile(re.escape(t).replace(re.escape("{w}"), "([a-z -]+)"))
        for t in NEXT_QUESTIONS
        if t.startswith(("And what does", "Now define"))
    ]
    eos = (stream == EOS_ID).nonzero().flatten()
    hits = [(m[1], k) for k, u in enumerate(user_turns) for rx in later if (m := rx.fullmatch(u))]
    assert len(hits) > 1000
    for word, k in hits[:200]:
        b = pairs[k][1]
        e = int(eos[torch.searchsorted(eos, b)])
        reply = sp.decode(ids[b + 1 : e])
        assert reply.startswith(word) or re.match(rf"As an? \w+, {re.escape(word)} means", reply), (word, reply)
