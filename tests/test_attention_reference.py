"""The SDPA attention path against dense attention built from the xformers bias's own `materialize()`.

Layouts come from `RollingCache.plan`, so this also checks that the bias the cache picks describes the
sliding-window rule of semantics 1 (key j visible to query i iff i - W < j <= i, same sequence only).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import W, make_args

from mixchat.cache import RollingCache
from mixchat.model import attn_ops
from mixchat.model.attn_ops import attend
from mixchat.model.layout import BatchLayout

pytestmark = pytest.mark.usefixtures("single_thread")

H, HKV, D = 4, 2, 16


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v per head, in float64, KV heads repeated for GQA."""
    g = q.shape[1] // k.shape[1]
    qd, kd, vd = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    scores = torch.einsum("thd,shd->hts", qd, kd) / math.sqrt(q.shape[-1]) + bias.double()[None]
    return torch.einsum("hts,shd->thd", torch.softmax(scores, -1), vd).float()


def rule_mask(q_pos: list[tuple[int, int]], k_pos: list[tuple[int, int] | None], window: int | None) -> torch.Tensor:
    """Semantics 1 for (sequence, absolute position) pairs; None marks a padding key."""
    m = torch.zeros(len(q_pos), len(k_pos), dtype=torch.bool)
    for a, (sq, i) in enumerate(q_pos):
        for b, kp in enumerate(k_pos):
            if kp is None:
                continue
            sk, j = kp
            m[a, b] = sq == sk and j <= i and (window is None or i - window < j)
    return m


def packed_positions(cache: RollingCache, layout: BatchLayout, rows: list[int]) -> tuple[list, list]:
    """(query, key) (sequence, position) lists for a prefill layout: per sequence, live cached keys then the chunk."""
    qs, ks = [], []
    for s, (r, n) in enumerate(zip(rows, layout.seqlens, strict=True)):
        seen = cache.seen[r]
        live = cache.live(r)
        qs += [(s, p) for p in range(seen, seen + n)]
        ks += [(s, p) for p in range(seen - live, seen + n)]
    return qs, ks


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 1.5


def check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout, rule: torch.Tensor) -> None:
    kflat = k.reshape(-1, HKV, D)
    vflat = v.reshape(-1, HKV, D)
    bias = layout.bias.materialize((q.shape[0], kflat.shape[0]), dtype=torch.float32)
    assert torch.equal(bias == 0, rule), "the xformers bias does not describe the sliding-window rule"
    assert torch.isneginf(bias[~rule]).all()
    assert rule.any(1).all()  # every query sees at least itself
    ref = dense_reference(q, kflat, vflat, bias)
    out = attend(q, k, v, layout)
    assert out.shape == q.shape
    err = (out - ref).abs().max().item()
    assert err <= 1e-5, f"SDPA path vs dense reference: {err:.2e}"


@pytest.mark.parametrize("window", [W, 5, None])
def test_first_chunk(window: int | None) -> None:
    """BlockDiagonalCausalMask (+ make_local_attention): sequences starting from nothing."""
    seqlens = [5, 2 * W + 3, 1, 20]
    cache = RollingCache(make_args("mixtral", window=window), 4, "cpu", torch.float32, max_context=128)
    layout = cache.plan(seqlens)
    assert layout.mode == "prefill" and layout.kv_lens == seqlens
    T = sum(seqlens)
    q, k, v = rand(T, H, D, seed=1), rand(T, HKV, D, seed=2), rand(T, HKV, D, seed=3)
    qs, ks = packed_positions(cache, layout, list(range(4)))
    check(q, k, v, layout, rule_mask(qs, ks, window))


@pytest.mark.parametrize("window", [W, 5, None])
@pytest.mark.parametrize("equal", [False, True])
def test_later_chunk_with_cached_keys(window: int | None, equal: bool) -> None:
    """BlockDiagonalMask + make_local_attention_from_bottomright: chunks on top of cached tokens."""
    args = make_args("mixtral", window=window)
    cache = RollingCache(args, 4, "cpu", torch.float32, max_context=128)
    if equal:  # the batched single-call SDPA path: same chunk and key lengths everywhere
        cache.seen = [40, 40, 40, 40]
        rows, seqlens = [0, 1, 2, 3], [6, 6, 6, 6]
    else:  # rows out of order, a chunk longer than the window, a row with a partly filled buffer
        cache.seen = [3, 40, W, 70]
        rows, seqlens = [3, 0, 1], [W + 4, 7, 1]
    layout = cache.plan(seqlens, rows)
    assert layout.mode == "prefill"
    assert layout.kv_lens == [cache.live(r) + n for r, n in zip(rows, seqlens, strict=True)]
    T, S = sum(seqlens), layout.kv_total
    q, k, v = rand(T, H, D, seed=4), rand(S, HKV, D, seed=5), rand(S, HKV, D, seed=6)
    qs, ks = packed_positions(cache, layout, rows)
    check(q, k, v, layout, rule_mask(qs, ks, window))


@pytest.mark.parametrize("window", [W, None])
@pytest.mark.parametrize("seen", [[0, 5, W - 1, 3 * W + 2], [40, 40, 40, 40], [7, 7, 7, 7]])
def test_decode_with_padded_keys(window: int | None, seen: list[int]) -> None:
    """BlockDiagonalCausalWithOffsetPaddedKeysMask: one query per row over its whole (padded) buffer."""
    args = make_args("mixtral", window=window)
    cache = RollingCache(args, 4, "cpu", torch.float32, max_context=64)
    cache.seen = list(seen)
    layout = cache.plan([1, 1, 1, 1])
    assert layout.mode == "decode"
    S = cache.slots
    B = 4
    q, k, v = rand(B, H, D, seed=7), rand(B, S, HKV, D, seed=8), rand(B, S, HKV, D, seed=9)
    # After this step's write, row r holds positions seen-live+1 .. seen at slots p % C; the rest is padding.
    C = cache.capacity
    qs = [(r, seen[r]) for r in range(B)]
    ks: list[tuple[int, int] | None] = []
    for r in range(B):
        held = {p % C: p for p in range(max(0, seen[r] + 1 - C), seen[r] + 1)}
        ks += [(r, held[s]) if s in held else None for s in range(S)]
    check(q, k, v, layout, rule_mask(qs, ks, window))


@pytest.fixture
def banded_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every windowed pre-fill sequence through the CPU's query-block path, with tiny blocks."""
    monkeypatch.setattr(attn_ops, "BAND_BLOCK", 4)
    monkeypatch.setattr(attn_ops, "BAND_MIN_SAVING", float("inf"))


@pytest.mark.usefixtures("banded_always")
@pytest.mark.parametrize("window", [W, 5])
@pytest.mark.parametrize("equal", [False, True])
def test_banded_path_matches_dense(window: int, equal: bool) -> None:
    """Query blocks over their window's keys (padding, causal head, last partial block) = the dense rule."""
    test_later_chunk_with_cached_keys(window, equal)
    test_first_chunk(window)
    seqlens = [2 * W + 3] * 3  # equal fresh sequences: the batched call
    cache = RollingCache(make_args("mixtral", window=window), 3, "cpu", torch.float32, max_context=128)
    layout = cache.plan(seqlens)
    T = sum(seqlens)
    q, k, v = rand(T, H, D, seed=11), rand(T, HKV, D, seed=12), rand(T, HKV, D, seed=13)
    qs, ks = packed_positions(cache, layout, [0, 1, 2])
    check(q, k, v, layout, rule_mask(qs, ks, window))
