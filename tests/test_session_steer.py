"""Undo, retry, edit and fork on the session layer (DESIGN.md semantics 7 and 10).

The reference is always independent of the code under test: one cache-free pass over the conversation's
remaining ids (`reference_logits`), or a snapshot of the cache taken by the test before a turn.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from session_support import ForwardRecorder, drain, make_checkpoint, runtime

from mixchat.model.layout import fresh_layout
from mixchat.session import ChatSettings, Conversation, ConversationError, ConversationStore, steer
from mixchat.session.undo import read_undo

TOL = 1e-4
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "warm",
    "mat",
    "while",
    "rain",
    "fell",
    "over",
    "quiet",
    "hills",
    "and",
    "rivers",
    "ran",
    "to",
    "the",
    "sea",
    "under",
    "grey",
    "skies;",
    "seven",
    "ships",
    "sailed",
    "north",
    "past",
    "old",
    "towers,",
    "bells",
    "rang,",
    "birds",
    "sang,",
    "people",
    "laughed",
]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return runtime(make_checkpoint(tmp_path_factory.mktemp("ckpt")))  # window 16, two layers


def assert_matches_fresh_prefill(conv: Conversation) -> None:
    """Next-token logits from the persistent cache equal one pre-fill of all of the conversation's ids."""
    assert conv.cache.seen[0] + len(conv.pending) == len(conv.ids)
    ref = fresh_prefill_logits(conv.model, conv.ids)
    torch.testing.assert_close(conv.next_token_logits(), ref, atol=TOL, rtol=0)


@torch.inference_mode()
def fresh_prefill_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """[V] logits after one cache-free pass over all ids (the model's own window rule), last position only."""
    layout = fresh_layout([len(ids)], model.args.sliding_window, "cpu")
    return model(torch.tensor(ids), layout, last_only=True)[0]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 28)))


@pytest.fixture
def one_thread():  # type: ignore[no-untyped-def]
    """A tiny model runs faster on one thread; on a busy 2-core machine, far faster (no contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_random_turns_retries_undos_and_edits_match_one_prefill(rt, tmp_path: Path, one_thread) -> None:  # type: ignore[no-untyped-def]
    """200+ seeded random actions on a window-16 model; after each, the cache equals a fresh pre-fill.

    Undos through the log are also checked slot for slot against a snapshot the test took before the turn,
    bursts of undos go past the log's depth (the pre-fill fallback), and every 40 actions the conversation
    is saved and resumed, so later undos use the log read back from disk.
    """
    rng = random.Random(17)
    store = ConversationStore(tmp_path)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=1.0, seed=5, max_tokens=12, chunk_size=7))
    before: list[tuple[list[int], torch.Tensor | None, int]] = []  # per turn: ids, cache snapshot, seen
    counts = {"turn": 0, "retry": 0, "undo": 0, "edit": 0, "log": 0, "fallback": 0, "resume": 0}
    max_wraps = 0
    actions = 0

    def take_snapshot() -> None:
        snap = conv.cache.snapshot(0)
        before.append((list(conv.ids), torch.cat([snap.k, snap.v]), snap.seen))

    def undone_exactly(undone: steer.Undone, saved: tuple[list[int], torch.Tensor | None, int]) -> None:
        ids, kv, seen = saved
        assert conv.ids == ids
        if undone.exact and conv.cache.seen[0] == seen:
            snap = conv.cache.snapshot(0)
            assert torch.equal(torch.cat([snap.k, snap.v]), kv)  # the very same slots, not just close

    while actions < 210:
        conv.settings.max_tokens = rng.randint(3, 20)
        conv.settings.chunk_size = rng.choice((7, 32, 512))
        has_turn = bool(conv.messages)
        long = len(conv.ids) > 320  # keep the reference pass short: go back more often once the talk is long
        action = rng.choices(["turn", "retry", "undo", "edit", "burst"], [40, 20, 40 if long else 20, 15, 3])[0]
        if not has_turn and action != "turn":
            action = "turn"
        if action == "turn":
            take_snapshot()
            drain(conv.send(sentence(rng)))
        elif action == "retry":
            saved = before[-1]
            drain(steer.retry(conv))
            assert conv.ids[: len(saved[0])] == saved[0]
        elif action == "edit":
            saved = before[-1]
            drain(steer.edit(conv, sentence(rng)))
            assert conv.ids[: len(saved[0])] == saved[0]
        else:
            for _ in range(rng.randint(9, 11) if action == "burst" else 1):
                if not conv.messages:
                    break
                in_log = conv.undo_log.top(conv.cache.seen[0], len(conv.ids), len(conv.messages)) is not None
                undone = steer.undo(conv)
                undone_exactly(undone, before.pop())
                counts["log" if in_log else "fallback"] += 1
                counts["undo"] += 1
                actions += 1
                if conv.ids:
                    assert_matches_fresh_prefill(conv)
            action = "undo"
        if action != "undo":
            counts[action] += 1
            actions += 1
        max_wraps = max(max_wraps, conv.cache.wraps(0))
        if conv.ids:
            assert_matches_fresh_prefill(conv)
        if actions % 40 == 0 and conv.messages:
            logged = len(conv.undo_log)
            store.save(conv, "random walk")
            conv = store.load_for(rt, "random walk").conversation
            counts["resume"] += 1
            assert len(conv.undo_log) == logged > 0
    assert actions >= 200
    assert min(counts["turn"], counts["retry"], counts["edit"], counts["fallback"], counts["resume"]) > 0, counts
    assert counts["log"] > 40 and max_wraps >= 4, (counts, max_wraps)


def test_undo_through_the_log_costs_no_forward_pass(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=10))
    for i in range(6):
        drain(conv.send(f"turn {i}: " + " ".join(WORDS[i : i + 12])))
    assert conv.cache.wraps(0) >= 4
    rec = ForwardRecorder(rt.engine)
    try:
        undone = steer.undo(conv)
    finally:
        rec.remove()
    assert rec.tokens == 0 and undone.exact and undone.pending == 1
    assert undone.user_text.startswith("turn 5:")
    assert_matches_fresh_prefill(conv)
    # what the log keeps is bounded by the turn and the window
    assert all(r.slots <= 16 for r in conv.undo_log.records)


def test_retry_at_temperature_zero_gives_the_same_reply(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=14))
    drain(conv.send("First there was a question about " + " ".join(WORDS[:20])))
    drain(conv.send("Then another one"))
    ids, reply = list(conv.ids), conv.messages[-1].content
    drain(steer.retry(conv))
    assert conv.ids == ids and conv.messages[-1].content == reply and len(conv.messages) == 4


def test_retry_with_a_seed_samples_again_reproducibly(rt) -> None:  # type: ignore[no-untyped-def]
    def replies() -> list[str]:
        conv = Conversation.from_runtime(rt, ChatSettings(temperature=1.5, top_p=1.0, seed=3, max_tokens=16))
        drain(conv.send("Say something"))
        out = [conv.messages[-1].content]
        for _ in range(3):
            drain(steer.retry(conv))
            out.append(conv.messages[-1].content)
        return out

    first = replies()
    assert len(set(first)) > 1  # new samples
    assert replies() == first  # the same ones in another run


def test_undo_with_nothing_to_undo_is_a_clear_error(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=4))
    with pytest.raises(ConversationError, match="nothing to undo"):
        steer.undo(conv)
    with pytest.raises(ConversationError, match="nothing to undo"):
        steer.retry(conv)
    with pytest.raises(ConversationError, match="nothing to fork"):
        steer.fork(conv, "copy")


def test_undo_beyond_the_log_rebuilds_from_the_ids(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=8))
    snapshots = []
    for i in range(11):
        snapshots.append(list(conv.ids))
        drain(conv.send(f"message {i} " + " ".join(WORDS[i : i + 6])))
    assert len(conv.undo_log) == 8
    for i in range(10, 2, -1):  # eight undos from the log
        assert steer.undo(conv).exact
        assert conv.ids == snapshots[i]
    undone = steer.undo(conv)  # the ninth: the window has wrapped, so the cache is rebuilt
    assert not undone.exact and conv.ids == snapshots[2] and conv.cache.seen[0] == 0
    progress = list(conv.prefill_pending())
    assert progress and conv.cache.seen[0] == len(conv.ids) - 1
    assert_matches_fresh_prefill(conv)


def test_undo_without_a_log_is_exact_on_a_full_attention_model(tmp_path: Path) -> None:
    rt = runtime(make_checkpoint(tmp_path / "full", window=None))
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=6))
    for text in ("one two three", "four five", "six"):
        drain(conv.send(text))
    conv.undo_log.clear()  # as for a conversation resumed without its log
    undone = steer.undo(conv)
    assert undone.exact and undone.pending == 1
    assert_matches_fresh_prefill(conv)


def test_edit_replaces_the_last_message(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=6))
    drain(conv.send("Hello"))
    drain(conv.send("What is a cat?"))
    drain(steer.edit(conv, "What is a dog?"))
    assert [m.content for m in conv.messages if m.role == "user"] == ["Hello", "What is a dog?"]
    fresh = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=6))
    drain(fresh.send("Hello"))
    drain(fresh.send("What is a dog?"))
    assert conv.ids == fresh.ids
    assert_matches_fresh_prefill(conv)
    with pytest.raises(ConversationError, match="empty"):
        steer.edit(conv, "  ")


def test_fork_copies_and_then_goes_its_own_way(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ConversationStore(tmp_path)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=8))
    for text in ("A long first message " + " ".join(WORDS[:20]), "and a second"):
        drain(conv.send(text))
    store.save(conv, "original")
    fork = steer.fork(conv, "branch")
    assert fork.id != conv.id and fork.ids == conv.ids and fork.cache is not conv.cache
    store.save(fork)
    drain(fork.send("only in the fork"))
    store.save(fork)
    assert_matches_fresh_prefill(conv)  # the original's cache was not touched by the fork's turn
    assert conv.turns == 2 and fork.turns == 3
    steer.undo(fork)
    steer.undo(fork)  # from the fork's copy of the log
    assert_matches_fresh_prefill(fork)
    a, b = store.folder("original"), store.folder("branch")
    assert a != b and not {p.name for p in a.iterdir()} & {p.name for p in b.iterdir()} - {
        "transcript.json",
        "cache-1.safetensors",
        "cache-2.safetensors",
        "undo-1.safetensors",
        "undo-2.safetensors",
    }
    assert store.read("original").turns == 2 and store.read("branch").turns == 3
    with pytest.raises(ConversationError, match="already exists"):
        store.save(steer.fork(conv, "branch"))


def test_undo_log_survives_save_and_resume_and_is_checked(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ConversationStore(tmp_path)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=8))
    states = []
    for i in range(4):
        states.append(list(conv.ids))
        drain(conv.send(f"turn {i} " + " ".join(WORDS[i : i + 15])))
    folder = store.save(conv, "logged")
    (undo_file,) = folder.glob("undo-*.safetensors")
    resumed = store.load_for(rt, "logged").conversation
    assert len(resumed.undo_log) == 4
    rec = ForwardRecorder(rt.engine)
    try:
        for i in (3, 2):
            assert steer.undo(resumed).exact and resumed.ids == states[i]
    finally:
        rec.remove()
    assert rec.tokens == 0
    assert_matches_fresh_prefill(resumed)

    # a damaged log is refused (the conversation opens, undo falls back to a pre-fill)
    data = bytearray(undo_file.read_bytes())
    data[-5] ^= 0xFF
    undo_file.write_bytes(bytes(data))
    damaged = store.load_for(rt, "logged")
    assert damaged.problem is None and len(damaged.conversation.undo_log) == 0
    t = store.read("logged")
    assert t.cache is not None
    with pytest.raises(Exception, match=r"checksum|damaged"):
        read_undo(undo_file, t.cache, damaged.conversation.cache, len(t.ids), len(t.messages))
    conv2 = damaged.conversation
    assert not steer.undo(conv2).exact and conv2.ids == states[3]
    drain(conv2.send("and on"))
    assert_matches_fresh_prefill(conv2)
