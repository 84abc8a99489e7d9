"""Check that the xformers kernel path and the torch SDPA path agree (run on a CUDA machine).

Covers the three attention layouts the engine uses, with several sequences packed into one pass:
a first pre-fill chunk (block-diagonal causal + local window), a later chunk over cached keys (bottom-right
local window) and decode steps (padded keys). Compares, in bf16, the attention outputs of the two paths on
random tensors and the logits of a small random Mixtral, and both against a float32 SDPA reference.

    python scripts/check_xformers.py
"""

from __future__ import annotations

import sys

import torch

from mixchat.cache import RollingCache
from mixchat.exec.gpu_modules import install_gpu_modules, restore_reference
from mixchat.exec.xformers_attn import attend_xformers
from mixchat.flags import Flags
from mixchat.loader import random_model
from mixchat.model import attn_ops
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.xformers_compat import kernels_work


def attention_case(name: str, cache: RollingCache, seqlens: list[int], H: int, D: int, tol: float) -> bool:
    layout = cache.plan(seqlens)
    T = sum(seqlens)
    Hkv = cache.args.n_kv_heads
    g = torch.Generator(device="cuda").manual_seed(len(name))
    q = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    shape = (cache.batch, cache.slots, Hkv, D) if layout.mode == "decode" else (layout.kv_total, Hkv, D)
    k = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
    xf = attend_xformers(q, k, v, layout)
    sd = attn_ops.attend(q, k, v, layout)
    ref = attn_ops.attend(q.float(), k.float(), v.float(), layout)
    e1 = (xf.float() - sd.float()).abs().max().item()
    e2 = (xf.float() - ref).abs().max().item()
    ok = e1 <= tol and e2 <= tol
    print(f"  attention {name:<34} xformers-vs-sdpa {e1:.2e}  xformers-vs-fp32 {e2:.2e}  {'ok' if ok else 'FAIL'}")
    cache.advance(layout)
    return ok


def model_case(moe: bool, tol: float) -> bool:
    """Logits of a random model through both paths, compared per pass against a float32 SDPA run.

    Each pass is judged by its error relative to the logits' scale. In a MoE model a bf16 rounding
    difference can flip a near-tied expert choice, so there the check is the bf16 paths' agreement with
    float32 to the same degree, not bit equality.
    """
    args = ModelArgs(
        dim=512,
        n_layers=4,
        head_dim=128,
        hidden_dim=1024,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=1000,
        sliding_window=64,
        moe=MoeArgs(8, 2) if moe else None,
    )
    base = random_model(args, seed=1, std=0.03)
    prompts = [[int(t) for t in torch.randint(0, 1000, (n,))] for n in (45, 150, 90)]
    steps = 12
    runs = {}
    forced: list[torch.Tensor] = []
    for mode, dtype in (("fp32", torch.float32), ("xformers", torch.bfloat16), ("sdpa", torch.bfloat16)):
        model = base.to("cuda", dtype)
        if mode == "xformers":
            install_gpu_modules(model, Flags(fused=False))  # xformers attention, everything else as written
        else:
            restore_reference(model)
        cache = RollingCache(args, 3, "cuda", dtype)
        out_seq = []
        with torch.inference_mode():
            for part in (slice(0, 40), slice(40, None)):
                layout = cache.plan([len(p[part]) for p in prompts])
                toks = torch.tensor([t for p in prompts for t in p[part]], device="cuda")
                out_seq.append(model(toks, layout, cache, last_only=True).float())
                cache.advance(layout)
            for i in range(steps):
                nxt = forced[i] if forced and len(forced) > i else out_seq[-1].argmax(-1)
                if mode == "fp32":
                    forced.append(nxt)
                layout = cache.plan([1, 1, 1])
                out_seq.append(model(nxt, layout, cache, last_only=True).float())
                cache.advance(layout)
        runs[mode] = out_seq
    kind = "Mixtral (MoE)" if moe else "Mistral (dense)"
    for mode in ("xformers", "sdpa"):
        rel = [((a - r).abs().max() / r.abs().max()).item() for a, r in zip(runs[mode], runs["fp32"], strict=True)]
        worst = max(rel)
        print(
            f"  {kind} logits, {mode:8} bf16 vs fp32: worst relative error over 2 pre-fill chunks + "
            f"{steps} decode steps = {worst:.2e}"
        )
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(runs["xformers"], runs["sdpa"], strict=True))
    xs = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(runs["xformers"], runs["sdpa"], strict=True))
    ok = xs <= tol
    print(
        f"  {kind} logits, xformers vs sdpa (both bf16): worst relative difference {xs:.2e}; "
        f"same argmax in {agree}/{len(runs['sdpa'])} passes  {'ok' if ok else 'FAIL'}"
    )
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 1
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    if not kernels_work("cuda"):
        print("xformers kernels do not run here (see docs: the H200 needs libcudart.so.12 alongside)")
        return 1
    import xformers

    print(f"xformers {xformers.__version__}: kernels run")
    H, D, W = 32, 128, 64
    args = ModelArgs(
        dim=H * D,
        n_layers=1,
        head_dim=D,
        hidden_dim=64,
        n_heads=H,
        n_kv_heads=8,
        vocab_size=10,
        sliding_window=W,
        moe=MoeArgs(8, 2),
    )
    cache = RollingCache(args, 3, "cuda", torch.bfloat16)
    tol = 2e-2
    ok = True
    ok &= attention_case("first chunk (3 packed seqs)", cache, [40, 100, 7], H, D, tol)
    ok &= attention_case("later chunk over cache (wraps)", cache, [90, 30, 64], H, D, tol)
    for i in range(3):
        ok &= attention_case(f"decode step {i + 1} (padded keys)", cache, [1, 1, 1], H, D, tol)
    ok &= model_case(moe=False, tol=0.02)
    ok &= model_case(moe=True, tol=0.02)
    print("ALL OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
