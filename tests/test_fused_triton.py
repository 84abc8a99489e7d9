"""The fused decode kernels (`fused_triton.py`), run by Triton's CPU interpreter against plain torch.

The interpreter is slow and has two quirks that shape these tests: it rounds float32 -> bfloat16 by
truncation (the GPU rounds to nearest), so bf16 results are compared within one bf16 step; and its
`tl.dot` on bf16 inputs returns garbage, so the GEMV kernels and the whole step are checked in float32.
Each check runs in a subprocess with TRITON_INTERPRET=1 (set before Triton is imported), as in
test_gpu_paths_on_cpu.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_KERNELS = """
import torch
import torch.nn.functional as F
from mixchat.exec import fused_triton as ft
from mixchat.exec.moe_triton import expert_gemv
from mixchat.model.rope import Rotary, apply_rotary

g = torch.Generator().manual_seed(0)


def close(got, want, dtype, steps=1):
    # bf16: within `steps` bf16 steps of the largest value (the interpreter truncates where the GPU rounds;
    # a chain of roundings, as in the MoE combine, can be off by more than one step)
    want = want.float()
    if dtype == torch.float32:
        torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(got.float(), want, rtol=0, atol=steps * 2**-6 * want.abs().max().item())


def ref_norm(h, w, eps):
    hf = h.float()
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).type_as(h) * w


for dtype in (torch.float32, torch.bfloat16):
    # add_rmsnorm / rmsnorm, D not a power of two
    for D in (96, 160):
        h = torch.randn(5, D, generator=g).to(dtype)
        d = torch.randn(5, D, generator=g).to(dtype)
        w = (1 + 0.1 * torch.randn(D, generator=g)).to(dtype)
        h_new, x = ft.add_rmsnorm(h, d, w, 1e-5)
        close(h_new, h + d, dtype)
        close(x, ref_norm(h + d, w, 1e-5), dtype)
        close(ft.rmsnorm(h, w, 1e-6), ref_norm(h, w, 1e-6), dtype)
        h3 = h.view(1, 5, D)
        close(ft.rmsnorm(h3, w, 1e-5), ref_norm(h3, w, 1e-5), dtype)

    # rope_store: q/k/v as slices of one qkv row (strided), positions past a wrapped window
    B, H, Hkv, hd, S = 3, 4, 2, 16, 6
    qkv = torch.randn(B, (H + 2 * Hkv) * hd, generator=g).to(dtype)
    q = qkv[:, : H * hd].view(B, H, hd)
    k = qkv[:, H * hd : (H + Hkv) * hd].view(B, Hkv, hd)
    v = qkv[:, (H + Hkv) * hd :].view(B, Hkv, hd)
    pos = torch.tensor([0, 5, 4099])
    rot = Rotary(hd, 1e6).rotation(pos)
    kc = torch.zeros(B * S, Hkv, hd, dtype=dtype)
    vc = torch.zeros_like(kc)
    slots = torch.tensor([2, 11, 13])
    qr = ft.rope_store(q, k, v, torch.view_as_real(rot), kc, vc, slots)
    close(qr, apply_rotary(q, rot), dtype)
    close(kc[slots], apply_rotary(k, rot), dtype)
    assert torch.equal(vc[slots], v)
    untouched = torch.ones(B * S, dtype=torch.bool)
    untouched[slots] = False
    assert not kc[untouched].any() and not vc[untouched].any()

    # route_topk: ties (lower index first), experts with no token, top-1 .. top-3, non power-of-two E
    for T, E, kk in ((1, 8, 2), (5, 8, 2), (16, 8, 2), (4, 6, 3), (3, 8, 1), (16, 8, 8)):
        logits = torch.randn(T, E, generator=g).to(dtype)
        logits[0, 1] = logits[0, 3] = logits[0].max() + 1  # a tie for the top spot
        r = ft.route_topk(logits, kk)
        top, experts = torch.topk(logits.float(), kk, dim=-1)
        assert torch.equal(r.experts, experts), (r.experts, experts)
        close(r.weights, torch.softmax(top, -1, dtype=torch.float32), torch.float32)
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        assert torch.equal(r.offs.long(), torch.bincount(flat, minlength=E).cumsum(0))
        assert torch.equal(r.token_of.long(), order // kk)
        # slot: each token's sorted rows, ascending; slot_weight their weights
        pos_of = torch.empty_like(order)
        pos_of[order] = torch.arange(T * kk)
        want_slot, idx = pos_of.view(T, kk).sort(-1)
        assert torch.equal(r.slot.long(), want_slot)
        assert torch.equal(r.slot_weight, r.weights.gather(1, idx))

# expert_gemv_swiglu (float32: see the module docstring), with empty experts and a gathered input
E, N, K, T, kk = 8, 200, 96, 6, 2
x = torch.randn(T, K, generator=g)
fused13 = torch.randn(E, 2 * N, K, generator=g) * 0.2  # w1/w3 as views of one gate/up tensor
w1, w3 = fused13[:, :N], fused13[:, N:]
logits = torch.randn(T, E, generator=g)
logits[:, 5:] -= 100  # experts 5..7 get no token
r = ft.route_topk(logits, kk)
assert r.offs[4] == r.offs[7] == T * kk
xs = x.index_select(0, r.token_of.long())
ex_sorted = r.experts.reshape(-1)[torch.argsort(r.experts.reshape(-1), stable=True)]
got = ft.expert_gemv_swiglu(x, w1, w3, r.offs, r.token_of)
want = torch.stack([F.silu(w1[e] @ xs[i]) * (w3[e] @ xs[i]) for i, e in enumerate(ex_sorted.tolist())])
torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

# combine_add_rmsnorm against the reference combine (weights cast, index_add_) + add + RMSNorm
for dtype in (torch.float32, torch.bfloat16):
    for kk in (1, 2, 3):
        T, E, D = 4, 8, 160
        logits = torch.randn(T, E, generator=g)
        r = ft.route_topk(logits.to(dtype), kk)
        ys = torch.randn(T * kk, D, generator=g).to(dtype)
        h = torch.randn(T, D, generator=g).to(dtype)
        w = (1 + 0.1 * torch.randn(D, generator=g)).to(dtype)
        order = torch.argsort(r.experts.reshape(-1), stable=True)
        moe = torch.zeros_like(h).index_add_(0, order // kk, ys * r.weights.reshape(-1)[order][:, None].to(dtype))
        h_new, xn = ft.combine_add_rmsnorm(h, ys, r, w, 1e-5)
        close(h_new, h + moe, dtype, steps=2)
        close(xn, ref_norm(h + moe, w, 1e-5), dtype, steps=2)

assert ft.fused_norm_works("cpu", torch.float32) and ft.fused_norm_works("cpu", torch.bfloat16)
assert ft.fused_decode_works("cpu", torch.float32)
print("ok")
"""

_STEP = """
import torch
from conftest import W, graph_step_inputs, make_model, random_tokens
from mixchat.cache import RollingCache
from mixchat.exec.graphs import GraphDecoder

torch.set_num_threads(1)
for kind in ("mixtral", "mistral", "full"):
    model = make_model(kind, max_context=512)
    prompts = [random_tokens(n, seed=n) for n in (W // 2, 2 * W + 3, 5)]
    caches = [RollingCache(model.args, 3, "cpu", torch.float32, max_context=4 * W) for _ in range(2)]
    plain, fused = GraphDecoder(model, fused=False), GraphDecoder(model, fused=True)
    with torch.inference_mode():
        for cache in caches:
            for r, p in enumerate(prompts):
                layout = cache.plan([len(p)], [r])
                model(torch.tensor(p), layout, cache, last_only=True)
                cache.advance(layout)
        for rows, step_tokens in (([0, 1, 2], [11, 12, 13]), ([2, 0], [21, 22]), ([1], [41])):
            outs = []
            for decoder, cache in zip((plain, fused), caches, strict=True):
                layout = cache.plan([1] * len(rows), rows)
                inputs = graph_step_inputs(cache, rows, step_tokens)
                row_idx = None if rows == [0, 1, 2] else torch.tensor(rows)
                routes = []
                outs.append((decoder._step(cache, row_idx, inputs, routes), routes))
                cache.advance(layout)
            (ref, ref_routes), (got, got_routes) = outs
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
            assert len(got_routes) == len(ref_routes)
            for a, b in zip(ref_routes, got_routes, strict=True):
                assert torch.equal(a.experts, b.experts)
                torch.testing.assert_close(b.weights, a.weights)
                torch.testing.assert_close(b.logits, a.logits)
        torch.testing.assert_close(caches[1].k, caches[0].k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(caches[1].v, caches[0].v, rtol=1e-5, atol=1e-5)
    # wq/wk/wv now view one fused weight; a second decoder reuses it instead of copying
    attn = model.layers[0].attention
    assert fused._qkv[0]["weight"].data_ptr() == attn.wq.weight.data_ptr()
    assert attn.wv.weight.data_ptr() == fused._qkv[0]["weight"][-attn.wv.weight.shape[0]].data_ptr()
    assert GraphDecoder(model, fused=True)._qkv[0]["weight"].data_ptr() == fused._qkv[0]["weight"].data_ptr()
print("ok")
"""

_STAGES = """
import os, sys
import torch
import conftest
from mixchat.exec.graphs import GraphDecoder
from conftest import W, make_model, random_tokens

sys.path.insert(0, os.path.join(os.path.dirname(conftest.__file__), "helpers"))
from stage_steps import check_split_step

torch.set_num_threads(1)
for kind in ("mixtral", "mistral"):
    model = make_model(kind, max_context=512)
    prompts = [random_tokens(n, seed=n) for n in (W // 2, 2 * W + 3, 5)]
    check_split_step(model, prompts, W, fused=True, world=2)
# quantized stages: the fused step over their codes (fused q/k/v codes, the SwiGLU pass), as on GPU ranks
from mixchat.exec.quant_gpu import install_gpu_quant_modules
from mixchat.quant.format import make_spec
from mixchat.shapes import random_model_on
for fmt in ("int8", "int4"):
    spec = make_spec(fmt)
    model = random_model_on(conftest.make_args("mixtral", W, 512), torch.device("cpu"), torch.float32, 0, spec)
    assert install_gpu_quant_modules(model, any_device=True) == ["TritonQuantLinear", "TritonQuantMoe"]
    assert GraphDecoder(model).fused is False and GraphDecoder(model, fused=True)._qkv[0].keys() >= {"qweight"}
    check_split_step(model, prompts, W, fused=True, world=2, spec=spec)
print("ok")
"""


def _run_interpreted(script: str) -> None:
    pytest.importorskip("triton")
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_fused_kernels_in_triton_interpreter() -> None:
    """Each kernel against the torch computation it replaces (float32 and bfloat16)."""
    _run_interpreted(_KERNELS)


def test_fused_step_equals_unfused_step_in_triton_interpreter() -> None:
    """The fused decode step against the unfused one: logits, routing trace and cache contents."""
    _run_interpreted(_STEP)


def test_fused_stage_steps_compose_to_the_whole_step_in_triton_interpreter() -> None:
    """Two pipeline stages' fused steps, chained, against the whole model's fused step: at the boundary the
    first stage hands on the residual stream and the second normalises it with its own first norm."""
    _run_interpreted(_STAGES)
