"""A conversation keeps one cache across turns (DESIGN.md semantics 7), consistent after cancel and errors.

Every check compares against an independent computation: one cache-free pass over the conversation's whole
token ids (`reference_logits`), or a fresh cache pre-filled from scratch.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from session_support import ForwardRecorder, W, drain, make_checkpoint, reference_logits, runtime

from mixchat.chat_template import Message, encode_chat
from mixchat.engine import PrefillProgressed, SequenceFinished, TokenGenerated
from mixchat.session import ChatSettings, Conversation, ConversationStore

TOL = 1e-4
QUESTIONS = [
    "Hello there, who are you?",
    "Tell me more about that",
    "Why is the sky blue?",
    "And what about the sea?",
    "Name three kinds of cheese",
    "Thanks, that is all",
    "One more: what is two plus two?",
]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return runtime(make_checkpoint(tmp_path_factory.mktemp("ckpt")))


def greedy(max_tokens: int = 6, chunk: int = 5, system: str | None = None) -> ChatSettings:
    return ChatSettings(system=system, temperature=0.0, max_tokens=max_tokens, chunk_size=chunk)


def assert_consistent(conv: Conversation, model) -> None:  # type: ignore[no-untyped-def]
    """The cache holds ids[:seen] exactly: its next-token logits equal one pass over all ids."""
    assert conv.cache.seen[0] + len(conv.pending) == len(conv.ids)
    ref = reference_logits(model, conv.ids)[-1]
    torch.testing.assert_close(conv.next_token_logits(), ref, atol=TOL, rtol=0)


def test_many_turns_match_one_prefill_and_memory_stays_flat(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, greedy())
    store = ConversationStore(tmp_path)
    rec = ForwardRecorder(rt.engine, only=conv.cache)
    sizes: list[tuple[int, int, int]] = []  # (tokens seen, cache bytes in memory, cache file bytes)
    try:
        for q in QUESTIONS:
            before = len(conv.ids)
            drain(conv.send(q))
            last = conv.last
            assert last is not None
            # Only the new tokens were fed: the pending reply token, the closing EOS, the new turn.
            assert last.prompt_tokens == len(conv.ids) - before - last.reply_tokens + (1 if before else 0)
            assert_consistent(conv, rt.model)
            assert conv.cache.live(0) == min(conv.cache.seen[0], W)
            folder = store.save(conv)
            cache_file = next(folder.glob("cache-*.safetensors"))
            sizes.append((conv.cache.seen[0], conv.cache.nbytes, cache_file.stat().st_size))
    finally:
        rec.remove()
    assert len(conv.ids) > 3 * W and conv.turns >= 6
    # Every logit the engine sampled from equals the reference at the same position.
    ref = reference_logits(rt.model, conv.ids)
    assert len(rec.passes) > len(QUESTIONS)
    for seen, logits in rec.passes:
        torch.testing.assert_close(logits, ref[seen - 1], atol=TOL, rtol=0)
    # Each token went through the model exactly once: nothing was ever pre-filled again.
    assert rec.tokens == conv.cache.seen[0] == conv.prefilled_tokens + conv.decoded_tokens
    # Memory (and the saved cache) stop growing once the conversation is past the window.
    past = [(mem, disk) for seen, mem, disk in sizes if seen >= W]
    assert len(past) >= 5 and len(set(past)) == 1
    assert max(m for _, m, _ in sizes) == sizes[-1][1]
    assert conv.cache.wraps(0) >= 3


def test_turn_layout_is_the_chat_template(rt) -> None:  # type: ignore[no-untyped-def]
    tok = rt.tokenizer
    conv = Conversation.from_runtime(rt, greedy(max_tokens=3, system="Be brief."))
    drain(conv.send("Hi"))
    first_turn = encode_chat(tok, [Message("system", "Be brief."), Message("user", "Hi")])
    assert conv.ids[: len(first_turn)] == first_turn
    reply_end = len(conv.ids)
    drain(conv.send("More"))
    closed = [] if conv.ids[reply_end - 1] == tok.eos_id else [tok.eos_id]
    expect = closed + tok.encode("[INST] More [/INST]", bos=False)
    assert conv.ids[reply_end : reply_end + len(expect)] == expect
    assert [m.role for m in conv.transcript_messages()] == ["system", "user", "assistant", "user", "assistant"]


def test_cancel_mid_reply_keeps_what_was_shown(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, greedy(max_tokens=40, chunk=4))
    for q in QUESTIONS[:3]:
        drain(conv.send(q))
    before = len(conv.ids)
    cancel = threading.Event()
    shown: list[str] = []
    tokens: list[int] = []
    finished = None
    for ev in conv.send("Write a long story please", cancel):
        if isinstance(ev, TokenGenerated):
            shown.append(ev.text)
            if ev.token >= 0:
                tokens.append(ev.token)
            if len(tokens) == 3:
                cancel.set()
        elif isinstance(ev, SequenceFinished):
            finished = ev
    assert finished is not None and finished.reason == "cancelled"
    reply = conv.messages[-1]
    assert reply.role == "assistant" and reply.finish_reason == "cancelled" and reply.tokens == 3
    assert reply.content == "".join(shown) == rt.tokenizer.decode(tokens)
    assert conv.ids[-3:] == tokens and len(conv.ids) > before + 3
    # The cache holds exactly the shown tokens but the last (pending): compare with a fresh pre-fill.
    assert conv.cache.seen[0] == len(conv.ids) - 1 and conv.pending == tokens[-1:]
    fresh = rt.engine.new_cache()
    rt.engine.chunk_size = 7
    for _ in rt.engine.prefill(fresh, [0], [conv.ids[:-1]]):
        pass
    a, b = conv.cache.snapshot(0), fresh.snapshot(0)
    torch.testing.assert_close(a.k, b.k, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.v, b.v, atol=1e-5, rtol=0)
    # The next turn starts from exactly that: its logits equal one pre-fill of the transcript's ids.
    end = len(conv.ids)
    rec = ForwardRecorder(rt.engine)
    try:
        drain(conv.send("Go on"))
    finally:
        rec.remove()
    assert conv.ids[end] == rt.tokenizer.eos_id  # the stopped reply was closed before the new turn
    ref = reference_logits(rt.model, conv.ids)
    for seen, logits in rec.passes:
        torch.testing.assert_close(logits, ref[seen - 1], atol=TOL, rtol=0)
    assert_consistent(conv, rt.model)


def test_cancel_during_prefill_leaves_conversation_untouched(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, greedy(chunk=4))
    for q in QUESTIONS[:4]:
        drain(conv.send(q))
    assert conv.cache.seen[0] > 2 * W  # wrapped: the pre-fill overwrites live slots
    k, v = conv.cache.k.clone(), conv.cache.v.clone()
    ids, messages, seen = list(conv.ids), list(conv.messages), conv.cache.seen[0]
    cancel = threading.Event()
    events = []
    for ev in conv.send("a long pasted text " * 10, cancel):
        events.append(ev)
        if isinstance(ev, PrefillProgressed) and ev.done >= 8:
            cancel.set()
    assert isinstance(events[-1], SequenceFinished) and events[-1].reason == "cancelled" and events[-1].ids == []
    assert not any(isinstance(ev, TokenGenerated) for ev in events)
    assert conv.ids == ids and conv.messages == messages and conv.cache.seen[0] == seen
    assert torch.equal(conv.cache.k, k) and torch.equal(conv.cache.v, v)
    drain(conv.send("short one"))
    assert_consistent(conv, rt.model)


def test_closing_the_stream_counts_as_cancel(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, greedy(max_tokens=30))
    drain(conv.send(QUESTIONS[0]))
    stream = conv.send(QUESTIONS[1])
    n = 0
    for ev in stream:
        if isinstance(ev, TokenGenerated):
            n += 1
            if n == 2:
                break
    stream.close()
    assert conv.messages[-1].finish_reason == "cancelled" and conv.messages[-1].tokens == 2
    assert_consistent(conv, rt.model)
    drain(conv.send(QUESTIONS[2]))
    assert_consistent(conv, rt.model)


@pytest.mark.parametrize("stage", ["prefill", "decode"])
def test_failure_mid_turn_keeps_the_conversation(rt, stage: str) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, greedy(max_tokens=10, chunk=4))
    for q in QUESTIONS[:3]:
        drain(conv.send(q))
    ids, messages, pending = list(conv.ids), list(conv.messages), conv.pending
    k, v = conv.cache.k.clone(), conv.cache.v.clone()
    start = conv.cache.seen[0]
    original = rt.engine.forward

    def failing(cache, rows, chunks, router_out=None):  # type: ignore[no-untyped-def]
        prefill_pass = len(chunks[0]) > 1 or cache.seen[0] == start
        if (stage == "prefill" and prefill_pass and cache.seen[0] > start) or (
            stage == "decode" and not prefill_pass and cache.seen[0] > len(ids) + 15
        ):
            raise RuntimeError("simulated device failure")
        return original(cache, rows, chunks, router_out)

    rt.engine.forward = failing
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            drain(conv.send("And what about the sea?"))
    finally:
        del rt.engine.forward
    assert conv.ids == ids and conv.messages == messages
    if stage == "prefill":  # put back exactly as it was
        assert conv.pending == pending and torch.equal(conv.cache.k, k) and torch.equal(conv.cache.v, v)
    else:  # a decode pass may have overwritten a live slot: the next turn rebuilds from the ids
        assert conv.pending == ids
    drain(conv.send(QUESTIONS[4]))
    assert_consistent(conv, rt.model)


def test_settings_reach_the_engine_each_turn(rt) -> None:  # type: ignore[no-untyped-def]
    one = Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=3, chunk_size=3, experts_per_token=1))
    drain(one.send("Hi"))
    assert rt.engine.chunk_size == 3 and rt.model.experts_per_token == 1
    assert one.last is not None and all(len(e) == 1 for r in one.last.routing for e in r.experts)
    usage = one.stats().expert_usage
    assert usage is not None and len(usage) == rt.model.args.n_layers and all(sum(u) == 3 for u in usage)
    two = Conversation.from_runtime(rt, greedy(max_tokens=3))
    drain(two.send("Hi"))
    assert rt.model.experts_per_token == 2 and rt.engine.chunk_size == 5


def test_seeded_sampling_repeats(rt) -> None:  # type: ignore[no-untyped-def]
    def run() -> list[int]:
        conv = Conversation.from_runtime(rt, ChatSettings(temperature=1.0, top_p=0.9, max_tokens=5, seed=11))
        drain(conv.send("Hi"))
        drain(conv.send("Again"))
        return conv.ids

    assert run() == run()


def test_system_prompt_only_before_first_turn(rt) -> None:  # type: ignore[no-untyped-def]
    from mixchat.session import ConversationError

    conv = Conversation.from_runtime(rt, greedy(max_tokens=2))
    conv.set_system("You are terse.")
    drain(conv.send("Hi"))
    with pytest.raises(ConversationError):
        conv.set_system("Something else")


def test_prefill_pending_rebuilds_in_steps(rt) -> None:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, greedy(chunk=4))
    for q in QUESTIONS[:3]:
        drain(conv.send(q))
    conv.invalidate_cache()
    assert conv.pending == conv.ids
    cancel = threading.Event()
    for p in conv.prefill_pending(cancel):
        if p.done >= 8:
            cancel.set()
    assert 8 <= conv.cache.seen[0] < len(conv.ids) - 1  # stopped part-way, still consistent
    assert_consistent(conv, rt.model)
    list(conv.prefill_pending())
    assert conv.pending == conv.ids[-1:]
    assert_consistent(conv, rt.model)


def test_full_attention_context_limit_keeps_the_conversation(tmp_path: Path) -> None:
    from mixchat.cache import ContextFullError
    from mixchat.runtime import load_runtime

    full = load_runtime(make_checkpoint(tmp_path / "full", window=None), device="cpu", max_context=48)
    conv = Conversation.from_runtime(full, greedy(max_tokens=8))
    drain(conv.send(QUESTIONS[0]))
    assert_consistent(conv, full.model)
    ids, seen = list(conv.ids), conv.cache.seen[0]
    with pytest.raises(ContextFullError):  # the new turn alone does not fit: dropped, nothing changed
        drain(conv.send("word " * 60))
    assert conv.ids == ids and conv.cache.seen[0] == seen
    conv.settings.max_tokens = 40
    with pytest.raises(ContextFullError):  # fits, but the reply runs into the limit: kept up to there
        drain(conv.send(QUESTIONS[1]))
    assert conv.messages[-1].finish_reason == "length" and conv.cache.seen[0] == 48 == len(conv.ids) - 1
    fresh = full.engine.new_cache()
    for _ in full.engine.prefill(fresh, [0], [conv.ids[:-1]]):
        pass
    torch.testing.assert_close(conv.cache.snapshot(0).k, fresh.snapshot(0).k, atol=1e-5, rtol=0)
