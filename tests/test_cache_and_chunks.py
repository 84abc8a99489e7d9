"""Rolling-buffer cache and chunked pre-fill (semantics 1-3, 7) against one cache-free pass."""

from __future__ import annotations

import pytest
import torch
from conftest import W, make_model, one_pass_logits, random_tokens

import mixchat.cache as cache_mod
from mixchat.cache import ContextFullError, RollingCache
from mixchat.engine import Engine, PrefillProgressed
from mixchat.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4


def feed_in_chunks(
    engine: Engine, cache: RollingCache, row: int, tokens: list[int], chunk: int
) -> list[tuple[int, torch.Tensor]]:
    """Feed `tokens` to `row` in passes of `chunk`; returns (absolute position, last logits) per pass."""
    out = []
    pos = 0
    while pos < len(tokens):
        piece = tokens[pos : pos + chunk]
        logits = engine.forward(cache, [row], [piece])[0]
        pos += len(piece)
        out.append((cache.seen[row] - 1, logits))
    return out


@pytest.mark.parametrize("chunk", [1, 3, W - 1, W, 2 * W + 1])
def test_chunked_prefill_equals_one_pass(any_model: Transformer, chunk: int) -> None:
    tokens = random_tokens(3 * W + 5, seed=chunk)
    ref = one_pass_logits(any_model, tokens)
    engine = Engine(any_model, None, chunk_size=chunk, eos_id=-1)
    cache = engine.new_cache(1)
    seen_before = 0
    for pos, logits in feed_in_chunks(engine, cache, 0, tokens, chunk):
        err = (logits - ref[pos]).abs().max().item()
        assert err <= TOL, f"chunk {chunk}, position {pos}: error {err:.2e}"
        assert pos + 1 - seen_before == min(chunk, len(tokens) - seen_before)
        seen_before = pos + 1
    assert cache.seen[0] == len(tokens)

    # The same through Engine.prefill (which drives the chunking itself).
    cache2 = engine.new_cache(1)
    items = list(engine.prefill(cache2, [0], [tokens]))
    progress = [i for i in items if isinstance(i, PrefillProgressed)]
    assert len(progress) == -(-len(tokens) // chunk)
    assert progress[-1].done == progress[-1].total == len(tokens)
    last = items[-1]
    assert isinstance(last, torch.Tensor) and last.shape == (1, any_model.args.vocab_size)
    assert (last[0] - ref[-1]).abs().max() <= TOL


def test_window_is_applied_in_one_pass(mixtral_model: Transformer) -> None:
    """Guard for the tests above: with a window, one pass differs from full attention past W tokens."""
    tokens = random_tokens(3 * W + 5, seed=99)
    windowed = one_pass_logits(mixtral_model, tokens)
    full = one_pass_logits(mixtral_model, tokens, window=None)
    assert (windowed[:W] - full[:W]).abs().max() <= TOL
    assert (windowed[W:] - full[W:]).abs().max() > 1e-3


@pytest.mark.parametrize("chunk", [1, 5, W, 3 * W])
def test_memory_constant_and_counters(mixtral_model: Transformer, chunk: int) -> None:
    engine = Engine(mixtral_model, None, chunk_size=chunk, eos_id=-1)
    cache = engine.new_cache(1)
    a = mixtral_model.args
    expected_bytes = 2 * a.n_layers * 1 * W * a.n_kv_heads * a.head_dim * 4
    tokens = random_tokens(10 * W, seed=7)
    nbytes_at_w = None
    wrap_count = 0
    pos = 0
    while pos < len(tokens):
        piece = tokens[pos : pos + chunk]
        engine.forward(cache, [0], [piece])
        # Count by hand how often writing came back round to slot 0 (position W, 2W, ...).
        wrap_count += sum(1 for p in range(pos, pos + len(piece)) if p > 0 and p % W == 0)
        pos += len(piece)
        assert cache.seen[0] == pos
        assert cache.live(0) == min(pos, W)
        assert cache.wraps(0) == wrap_count
        assert cache.nbytes == expected_bytes
        if pos >= W and nbytes_at_w is None:
            nbytes_at_w = cache.nbytes
    assert cache.nbytes == nbytes_at_w
    assert cache.wraps(0) == 9


@pytest.mark.parametrize("window", [4, 7, W, None])
def test_turns_equal_one_prefill(window: int | None) -> None:
    """Several separate pre-fills of uneven lengths (chat turns) on one row equal one pre-fill of it all."""
    model = make_model("mixtral", window=window, seed=3)
    turns = [7, 1, 23, 2, 40, 5, 1, 13]
    tokens = random_tokens(sum(turns), seed=17)
    ref = one_pass_logits(model, tokens)
    engine = Engine(model, None, chunk_size=6, eos_id=-1)
    cache = engine.new_cache(2)
    pos = 0
    for n in turns:
        items = list(engine.prefill(cache, [1], [tokens[pos : pos + n]]))
        pos += n
        logits = items[-1]
        assert isinstance(logits, torch.Tensor)
        err = (logits[0] - ref[pos - 1]).abs().max().item()
        assert err <= TOL, f"window {window}, after {pos} tokens: error {err:.2e}"
    assert cache.seen == [0, len(tokens)]


def test_turns_with_different_window_models_differ() -> None:
    """The window changes the result of the turn test above (so that test can fail)."""
    tokens = random_tokens(60, seed=17)
    a = one_pass_logits(make_model("mixtral", window=4, seed=3), tokens)
    b = one_pass_logits(make_model("mixtral", window=None, seed=3), tokens)
    assert (a[-1] - b[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("chunk", [1, 3, 50, 200])
def test_full_attention_chunked_equals_one_pass(full_model: Transformer, chunk: int) -> None:
    tokens = random_tokens(130, seed=chunk + 1)
    ref = one_pass_logits(full_model, tokens)
    engine = Engine(full_model, None, chunk_size=chunk, eos_id=-1)
    cache = engine.new_cache(1)
    for pos, logits in feed_in_chunks(engine, cache, 0, tokens, chunk):
        assert (logits - ref[pos]).abs().max() <= TOL, f"chunk {chunk}, position {pos}"
    assert cache.live(0) == len(tokens) and cache.wraps(0) == 0


def test_full_attention_context_full_error(full_model: Transformer) -> None:
    engine = Engine(full_model, None, chunk_size=16, eos_id=-1)
    cache = engine.new_cache(2, max_context=40)
    assert cache.capacity == 40
    tokens = random_tokens(40, seed=5)
    feed_in_chunks(engine, cache, 0, tokens, 16)
    assert cache.seen == [40, 0]
    k_before, v_before = cache.k.clone(), cache.v.clone()
    with pytest.raises(ContextFullError, match="40"):
        engine.forward(cache, [0], [[5]])
    with pytest.raises(ContextFullError):
        engine.forward(cache, [1, 0], [[5, 6], [7]])  # one row of a packed pass overflows
    # Refused before anything was written: the cache still describes the 40 tokens exactly.
    assert cache.seen == [40, 0]
    assert torch.equal(cache.k, k_before) and torch.equal(cache.v, v_before)
    # Row 1 is independent and still usable; a prompt that overflows during chunked pre-fill raises too,
    # after whole passes only (the cache never holds more than the context).
    engine.forward(cache, [1], [tokens[:10]])
    with pytest.raises(ContextFullError):
        list(engine.prefill(cache, [1], [random_tokens(31, seed=6)]))
    assert cache.seen[1] == 10


def test_full_attention_growable_buffer(full_model: Transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Growth of the full-attention buffer (doubling) never changes results."""
    monkeypatch.setattr(cache_mod, "_INITIAL_GROWABLE_SLOTS", 8)
    tokens = random_tokens(100, seed=8)
    ref = one_pass_logits(full_model, tokens)
    engine = Engine(full_model, None, chunk_size=7, eos_id=-1)
    cache = engine.new_cache(2, max_context=100)
    assert cache.slots == 8
    sizes = []
    pos = 0
    for n in [1, 3, 5, 9, 2, 17, 1, 1, 33, 28]:
        piece = tokens[pos : pos + n]
        logits = engine.forward(cache, [1], [piece])[0]
        pos += n
        sizes.append(cache.slots)
        assert cache.slots >= pos
        assert (logits - ref[pos - 1]).abs().max() <= TOL, f"after {pos} tokens (slots {cache.slots})"
    assert pos == 100
    assert sizes[0] == 8 and sizes[-1] == 100  # grew, and capped at the maximum context
    assert len(set(sizes)) >= 4
    # Decode steps on the other row after growth also match.
    other = random_tokens(20, seed=9)
    ref2 = one_pass_logits(full_model, other)
    for i, t in enumerate(other):
        logits = engine.forward(cache, [0], [[t]])[0]
        assert (logits - ref2[i]).abs().max() <= TOL


def test_window_buffer_grows_then_rolls(mixtral_model: Transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window buffer starts small and grows to W before it first wraps: results match one pass through
    growth and wraps, memory stops at W slots, and an undo point taken before a pass that both grows the
    buffer and wraps it rolls back exactly."""
    monkeypatch.setattr(cache_mod, "_INITIAL_GROWABLE_SLOTS", 2)
    tokens = random_tokens(5 * W + 3, seed=11)
    ref = one_pass_logits(mixtral_model, tokens)
    engine = Engine(mixtral_model, None, chunk_size=64, eos_id=-1)
    cache = engine.new_cache(1)
    assert cache.slots == 2
    a = mixtral_model.args
    full_bytes = 2 * a.n_layers * W * a.n_kv_heads * a.head_dim * 4
    sizes, pos = [], 0
    for n in [1, 2, 3, 12, 1, 9, 2, 20, 1, 3, 20, 1, 8]:
        piece = tokens[pos : pos + n]
        if pos == 6:  # 6 tokens in 8 slots: this pass grows the buffer to 16 and wraps it
            point = cache.undo_point(0, n)
            engine.forward(cache, [0], [random_tokens(n, seed=12)])
            cache.rollback(point)
        logits = engine.forward(cache, [0], [piece])[0]
        pos += n
        sizes.append(cache.slots)
        assert (logits - ref[pos - 1]).abs().max() <= TOL, f"after {pos} tokens (slots {cache.slots})"
    assert pos == len(tokens)
    assert sizes[0] == 2 and sizes[-1] == W and len(set(sizes)) >= 3
    assert cache.nbytes == full_bytes


@pytest.mark.parametrize("kind", ["mixtral", "full"])
def test_snapshot_restore(kind: str) -> None:
    model = make_model(kind, max_context=256)
    engine = Engine(model, None, chunk_size=9, eos_id=-1)
    prefix = random_tokens(2 * W + 7, seed=10)
    cont = random_tokens(W + 3, seed=11)
    ref = one_pass_logits(model, prefix + cont)

    cache = engine.new_cache(3)
    # Other rows hold other sequences, so a restore that mixes rows up would show.
    engine.forward(cache, [0, 1, 2], [random_tokens(5, 1), prefix[:20], random_tokens(30, 2)])
    engine.forward(cache, [1], [prefix[20:]])
    snap = cache.snapshot(1)
    assert snap.seen == len(prefix)
    assert snap.k.shape[1] == cache.live(1)

    def continue_from(c: RollingCache, row: int) -> None:
        for i, t in enumerate(cont):
            logits = engine.forward(c, [row], [[t]])[0]
            assert (logits - ref[len(prefix) + i]).abs().max() <= TOL, f"{kind}: step {i}"

    continue_from(cache, 1)  # the original row works ...
    cache.restore(snap, 1)  # ... and, rewound, gives the same again
    assert cache.seen[1] == len(prefix)
    continue_from(cache, 1)

    single = engine.new_cache(1)  # a cache of a different batch size
    single.restore(snap, 0)
    assert single.seen == [len(prefix)] and single.live(0) == snap.k.shape[1]
    continue_from(single, 0)

    wider = engine.new_cache(5)  # and into a different row
    wider.restore(snap, 3)
    continue_from(wider, 3)
    # Prefill chunks (not only decode steps) on top of a restored row too.
    again = engine.new_cache(2)
    again.restore(snap, 1)
    for pos, logits in feed_in_chunks(engine, again, 1, cont, 4):
        assert (logits - ref[pos]).abs().max() <= TOL  # pos is absolute
