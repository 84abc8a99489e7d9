"""Packed sequences (semantics 4): several sequences in one pass give each exactly its result alone."""

from __future__ import annotations

import pytest
import torch
from conftest import W, make_model, random_tokens

from mixchat.engine import Engine, SequenceFinished, TokenGenerated
from mixchat.model.transformer import Transformer
from mixchat.sampling import SamplingSettings

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4
N_DECODE = 20


def prompts() -> list[list[int]]:
    # Different lengths, one longer than the window (and than two windows).
    return [random_tokens(5, seed=21), random_tokens(2 * W + 9, seed=22), random_tokens(11, seed=23)]


def run_generate(engine: Engine, ps: list[list[int]]) -> dict[int, list[TokenGenerated]]:
    settings = SamplingSettings(temperature=0.0, max_tokens=N_DECODE + 1)
    out: dict[int, list[TokenGenerated]] = {i: [] for i in range(len(ps))}
    finished = {}
    for e in engine.generate(ps, settings):
        if isinstance(e, TokenGenerated):
            out[e.seq].append(e)
        elif isinstance(e, SequenceFinished):
            finished[e.seq] = e
    assert set(finished) == set(range(len(ps)))
    for i, f in finished.items():
        assert f.reason == "length" and f.ids == [t.token for t in out[i]]
    return out


@pytest.fixture(scope="module", params=["mixtral", "mistral", "full"])
def model(request: pytest.FixtureRequest) -> Transformer:
    return make_model(request.param, max_context=256)


@pytest.mark.parametrize("chunk", [4, W, 512])
def test_packed_generate_equals_alone(model: Transformer, chunk: int) -> None:
    ps = prompts()
    engine = Engine(model, None, chunk_size=chunk, eos_id=-1)
    packed = run_generate(engine, ps)
    for i, p in enumerate(ps):
        alone = run_generate(Engine(model, None, chunk_size=512, eos_id=-1), [p])[0]
        assert [t.token for t in packed[i]] == [t.token for t in alone], f"sequence {i}, chunk {chunk}"
        assert len(alone) == N_DECODE + 1
        for a, b in zip(packed[i], alone, strict=True):
            assert (a.routing is None) == (b.routing is None) == (model.args.moe is None)
            if a.routing is not None and b.routing is not None:
                assert a.routing.experts == b.routing.experts
                for wa, wb in zip(a.routing.weights, b.routing.weights, strict=True):
                    assert max(abs(x - y) for x, y in zip(wa, wb, strict=True)) <= 1e-5
    # Packing changes nothing, but the prompts do produce different continuations (the test can fail).
    assert len({tuple(t.token for t in packed[i]) for i in packed}) == len(ps)


@pytest.mark.parametrize("chunk", [1, 3, W - 1, 2 * W + 1])
def test_packed_forward_logits_equal_alone(model: Transformer, chunk: int) -> None:
    """Engine.forward step by step: pre-fill in chunks, then decode; packed vs each sequence alone."""
    ps = prompts()
    n = len(ps)
    engine = Engine(model, None, chunk_size=chunk, eos_id=-1)
    packed_cache = engine.new_cache(n)
    alone_caches = [engine.new_cache(1) for _ in range(n)]

    offsets = [0] * n
    step = 0
    while any(offsets[i] < len(ps[i]) for i in range(n)):
        active = [i for i in range(n) if offsets[i] < len(ps[i])]
        active = active[step % len(active) :] + active[: step % len(active)]  # rows in varying order
        chunks = [ps[i][offsets[i] : offsets[i] + chunk] for i in active]
        packed = engine.forward(packed_cache, active, chunks)
        for j, i in enumerate(active):
            alone = engine.forward(alone_caches[i], [0], [chunks[j]])
            err = (packed[j] - alone[0]).abs().max().item()
            assert err <= TOL, f"pre-fill step {step}, sequence {i}: error {err:.2e}"
            offsets[i] += len(chunks[j])
        step += 1

    # Decode: every row, then a subset of rows (a finished sequence drops out), in varying order.
    last = [ps[i][-1] for i in range(n)]
    for d in range(N_DECODE):
        rows = list(range(n)) if d < N_DECODE // 2 else [[2, 0], [1, 2], [0]][d % 3]
        packed = engine.forward(packed_cache, rows, [[last[i]] for i in rows])
        for j, i in enumerate(rows):
            alone = engine.forward(alone_caches[i], [0], [[last[i]]])
            err = (packed[j] - alone[0]).abs().max().item()
            assert err <= TOL, f"decode step {d}, sequence {i}: error {err:.2e}"
            last[i] = int(alone[0].argmax())
    for i in range(n):
        assert packed_cache.seen[i] == alone_caches[i].seen[0]
        assert packed_cache.live(i) == alone_caches[i].live(0)


def test_packed_routing_trace_equals_alone() -> None:
    """The routing reported for a packed pass lines up with each sequence's own tokens."""
    model = make_model("mixtral")
    ps = prompts()
    engine = Engine(model, None, chunk_size=7, eos_id=-1)
    packed_cache = engine.new_cache(3)
    packed_routing: list = []
    engine.forward(packed_cache, [0, 1, 2], [p[:7] for p in ps], router_out=packed_routing)
    start = 0
    for p in ps:
        alone_routing: list = []
        n = min(7, len(p))
        engine.forward(engine.new_cache(1), [0], [p[:7]], router_out=alone_routing)
        for rp, ra in zip(packed_routing, alone_routing, strict=True):
            assert torch.equal(rp.experts[start : start + n], ra.experts)
            assert (rp.weights[start : start + n] - ra.weights).abs().max() <= 1e-5
        start += n
