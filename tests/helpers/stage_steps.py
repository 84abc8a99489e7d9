"""A small model split into pipeline stages, and the graph decode step checked stage by stage against the
whole model's step (run eagerly: no CUDA here). Used by tests/test_gpu_paths_on_cpu.py and, with the fused
kernels in Triton's interpreter, by tests/test_fused_triton.py.

The check: for a few decode steps (all rows; a subset in another order; one row), the last stage's step
applied to the first stage's output equals the whole model's step: logits within `atol`, the same routing
(experts exactly, weights and gate logits to float noise), and every stage's cache rows equal to the whole
cache's rows for its layers.
"""

from __future__ import annotations

import torch
from conftest import graph_step_inputs

from mixchat.cache import RollingCache
from mixchat.distributed.partition import stage_part
from mixchat.exec.graphs import GraphDecoder
from mixchat.exec.quant_gpu import install_gpu_quant_modules
from mixchat.model.layers import Routing
from mixchat.model.stage import StageModel
from mixchat.model.transformer import Transformer
from mixchat.quant.format import QuantSpec
from mixchat.quant.modules import quantize_modules


def split(model: Transformer, world: int, spec: QuantSpec | None = None) -> list[StageModel]:
    """The stages a pipeline of `world` ranks would build, holding copies of `model`'s weights (its codes and
    scales where `spec` says the model is quantized; the stages then get the Triton modules, as `model`
    should have)."""
    full = model.state_dict()
    stages = []
    for rank in range(world):
        with torch.device("meta"):
            stage = StageModel(model.args, stage_part(model.args.n_layers, world, rank))
        quantize_modules(stage, spec or QuantSpec())
        stage = stage.to_empty(device="cpu")
        own = stage.state_dict()
        stage.load_state_dict({name: full[name] for name in own}, strict=True)
        if spec is not None and spec.quantized:
            install_gpu_quant_modules(stage, any_device=True)
        stages.append(stage.eval().requires_grad_(False))
    return stages


def check_split_step(
    model: Transformer,
    prompts: list[list[int]],
    window: int,
    fused: bool,
    world: int = 2,
    atol: float = 1e-5,
    spec: QuantSpec | None = None,
) -> None:
    stages = split(model, world, spec)
    whole = GraphDecoder(model, fused=fused)
    parts = [GraphDecoder(s, fused=fused) for s in stages]
    assert whole.whole and not any(p.whole for p in parts)
    B = len(prompts)
    ref_cache = RollingCache(model.args, B, "cpu", torch.float32, max_context=4 * window)
    caches = [
        RollingCache(model.args, B, "cpu", torch.float32, layers=s.part.layers, max_context=4 * window) for s in stages
    ]
    with torch.inference_mode():
        for r, p in enumerate(prompts):  # pre-fill: the module path, whole and stage by stage (eager pipeline)
            layout = ref_cache.plan([len(p)], [r])
            model(torch.tensor(p), layout, ref_cache, last_only=True)
            ref_cache.advance(layout)
            h = stages[0].embed(torch.tensor(p))
            for stage, cache in zip(stages, caches, strict=True):
                layout = cache.plan([len(p)], [r])
                h = stage.run_layers(h, layout, cache, None)
                cache.advance(layout)
        steps = [([0, 1, 2], [11, 12, 13]), ([2, 0], [21, 22]), ([1], [41]), ([0, 1, 2], [31, 32, 33])]
        for rows, tokens in steps:
            row_idx = None if rows == list(range(B)) else torch.tensor(rows)
            layout = ref_cache.plan([1] * len(rows), rows)
            ref_routes: list[Routing] = []
            ref = whole._step(ref_cache, row_idx, graph_step_inputs(ref_cache, rows, tokens), ref_routes)
            ref_cache.advance(layout)

            routes: list[Routing] = []
            h: torch.Tensor | None = None
            for i, (dec, cache) in enumerate(zip(parts, caches, strict=True)):
                layout = cache.plan([1] * len(rows), rows)
                # Later stages never look at the token ids: zeros there prove it.
                ids = tokens if i == 0 else [0] * len(rows)
                h = dec._step(cache, row_idx, graph_step_inputs(cache, rows, ids), routes, h)
                cache.advance(layout)
                if i + 1 < world:
                    assert h.shape == (len(rows), model.args.dim) and h.dtype == model.dtype
            assert h is not None
            torch.testing.assert_close(h, ref, rtol=0, atol=atol)
            assert len(routes) == len(ref_routes) == (model.args.n_layers if model.args.moe else 0)
            for a, b in zip(ref_routes, routes, strict=True):
                assert torch.equal(a.experts, b.experts)
                torch.testing.assert_close(b.weights, a.weights, rtol=0, atol=atol)
                torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=atol)
        for stage, cache in zip(stages, caches, strict=True):
            span = slice(stage.part.layers.start, stage.part.layers.stop)
            torch.testing.assert_close(cache.k, ref_cache.k[span], rtol=0, atol=atol)
            torch.testing.assert_close(cache.v, ref_cache.v[span], rtol=0, atol=atol)
