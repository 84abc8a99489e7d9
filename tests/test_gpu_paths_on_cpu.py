"""The GPU fast path's maths, run eagerly on the CPU: grouped-GEMM MoE and the graph-captured decode step.

CUDA graphs cannot be captured here, but what they replay is plain tensor code. These tests run that code
directly and compare it with the reference module path (`Transformer.forward` through the rolling cache),
so a mistake in slot arithmetic, masking, row selection or expert grouping fails here, not only on a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import W, graph_step_inputs, make_model, random_tokens

from mixchat.cache import RollingCache
from mixchat.exec.graphs import GraphDecoder
from mixchat.exec.moe_grouped import grouped_mm_works, grouped_moe_forward
from mixchat.model.layers import MoeLayer
from mixchat.model.transformer import Transformer

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not grouped_mm_works("cpu", torch.float32), reason="torch._grouped_mm unavailable"),
]


@pytest.mark.parametrize("n_tokens", [1, 2, 7, 64])
def test_grouped_moe_equals_loop(n_tokens: int) -> None:
    torch.manual_seed(n_tokens)
    layer = MoeLayer(32, 48, 8, 2)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(n_tokens, 32)
    with torch.inference_mode():
        routes_a: list = []
        routes_b: list = []
        a = layer(x, routes_a)
        b = grouped_moe_forward(layer, x, routes_b)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert torch.equal(routes_a[0].experts, routes_b[0].experts)


@pytest.mark.parametrize("kind", ["mixtral", "full"])
def test_graph_step_equals_module_decode(kind: str, mixtral_model: Transformer, full_model: Transformer) -> None:
    """Three rows at different positions (one past the window, so its buffer has wrapped), decoded by the
    graph step and by the module path; then a step that covers only rows 2 and 0, in that order."""
    model = mixtral_model if kind == "mixtral" else full_model
    prompts = [random_tokens(n, seed=n) for n in (W // 2, 2 * W + 3, 5)]
    caches = [RollingCache(model.args, 3, "cpu", torch.float32, max_context=4 * W) for _ in range(2)]
    decoder = GraphDecoder(model)
    with torch.inference_mode():
        for cache in caches:
            for r, p in enumerate(prompts):
                layout = cache.plan([len(p)], [r])
                model(torch.tensor(p), layout, cache, last_only=True)
                cache.advance(layout)
        for rows, step_tokens in (([0, 1, 2], [11, 12, 13]), ([2, 0], [21, 22]), ([0, 1, 2], [31, 32, 33])):
            ref_cache, fast_cache = caches
            layout = ref_cache.plan([1] * len(rows), rows)
            ref = model(torch.tensor(step_tokens), layout, ref_cache, last_only=True)
            ref_cache.advance(layout)

            layout = fast_cache.plan([1] * len(rows), rows)  # grows a full-attention buffer if needed
            inputs = graph_step_inputs(fast_cache, rows, step_tokens)
            row_idx = None if rows == [0, 1, 2] else torch.tensor(rows)
            routes: list = []
            got = decoder._step(fast_cache, row_idx, inputs, routes)
            fast_cache.advance(layout)
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
            assert len(routes) == (model.args.n_layers if model.args.moe else 0)
        assert torch.allclose(caches[0].k, caches[1].k, atol=1e-5)


@pytest.mark.parametrize("kind", ["mixtral", "mistral", "full"])
@pytest.mark.parametrize("world", [2, 3])
def test_stage_steps_compose_to_the_whole_step(kind: str, world: int) -> None:
    """A pipeline stage's graph step (layers of one rank, from token ids or from the previous stage's `h`,
    to `h` or to logits), chained over a 2- and a 3-way split, equals the whole model's graph step."""
    sys.path.insert(0, str(Path(__file__).parent / "helpers"))
    from stage_steps import check_split_step

    model = make_model(kind, max_context=512)
    prompts = [random_tokens(n, seed=n) for n in (W // 2, 2 * W + 3, 5)]
    check_split_step(model, prompts, W, fused=False, world=world)


_TRITON_CHECK = """
import torch
from mixchat.exec import moe_triton as mt
from mixchat.model.layers import MoeLayer
from mixchat.exec import moe_grouped

g = torch.Generator().manual_seed(3)
w = torch.randn(8, 200, 96, generator=g)
x = torch.randn(7, 96, generator=g)
counts = [0, 3, 0, 0, 1, 0, 3, 0]  # empty experts, and groups of several rows
offs = torch.tensor(counts).cumsum(0).to(torch.int32)
experts = [e for e, n in enumerate(counts) for _ in range(n)]
want = torch.stack([w[e] @ x[i] for i, e in enumerate(experts)])
torch.testing.assert_close(mt.expert_gemv(x, w, offs), want, rtol=1e-4, atol=1e-4)
fused = torch.randn(8, 400, 96, generator=g)  # w1 as a view of a fused gate/up tensor (bench's twin)
view = fused[:, :200]
torch.testing.assert_close(mt.expert_gemv(x, view, offs), torch.stack([view[e] @ x[i] for i, e in enumerate(experts)]),
                           rtol=1e-4, atol=1e-4)
assert mt.expert_gemv_works("cpu", torch.float32)
print("ok")
"""


def test_expert_gemv_kernel_in_triton_interpreter() -> None:
    """The decode GEMV kernel, run by Triton's CPU interpreter (the GPU compiles the same kernel)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _TRITON_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
