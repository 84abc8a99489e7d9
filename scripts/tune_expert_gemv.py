"""Time the decode expert GEMV kernels on Mixtral 8x7B's expert shapes for a few tile settings (GPU only).

    python scripts/tune_expert_gemv.py

For batch 1 (two experts, one row each) and batch 8 (eight rows over the experts), prints the achieved
bandwidth of `expert_gemv_swiglu` (w1 and w3 together) and of the w2 `expert_gemv`, counting only the
weights of the experts that have rows. Used to pick the defaults in `moe_triton.py` / `fused_triton.py`.
"""

from __future__ import annotations

import functools
import itertools

import torch

from mixchat.exec.fused_triton import expert_gemv_swiglu
from mixchat.exec.moe_triton import expert_gemv


def timed(fn, reps: int = 30) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def main() -> None:
    dev, dt = torch.device("cuda"), torch.bfloat16
    E, D, F = 8, 4096, 14336
    w1 = torch.randn(E, F, D, device=dev, dtype=dt) * 0.02
    w3 = torch.randn(E, F, D, device=dev, dtype=dt) * 0.02
    w2 = torch.randn(E, D, F, device=dev, dtype=dt) * 0.02
    for name, experts in (("b1", [2, 5]), ("b8", [0, 0, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 1, 2, 4, 7])):
        counts = torch.bincount(torch.tensor(experts), minlength=E)
        offs = counts.cumsum(0).to(torch.int32).to(dev)
        R = len(experts)
        used = int((counts > 0).sum())
        x = torch.randn(R, D, device=dev, dtype=dt)
        tok = torch.arange(R, device=dev, dtype=torch.int32)
        h = torch.randn(R, F, device=dev, dtype=dt)
        b13, b2 = used * 2 * F * D * 2, used * D * F * 2
        print(f"== {name}: {R} rows over {used} experts")
        for bn, bk, nw, ns in itertools.product((16, 32, 64), (64, 128, 256), (4, 8), (2, 3, 4)):
            cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": nw, "num_stages": ns}
            try:
                t13 = timed(functools.partial(expert_gemv_swiglu, x, w1, w3, offs, tok, cfg))
                t2 = timed(functools.partial(expert_gemv, h, w2, offs, cfg))
            except Exception as exc:  # a setting the compiler rejects (too much shared memory)
                print(f"{cfg}: {type(exc).__name__}")
                continue
            print(
                f"BN={bn:3d} BK={bk:3d} warps={nw} stages={ns}  swiglu {b13 / t13 / 1e12:5.2f} TB/s "
                f"({t13 * 1e6:6.1f} us)  w2 {b2 / t2 / 1e12:5.2f} TB/s ({t2 * 1e6:6.1f} us)"
            )


if __name__ == "__main__":
    main()
