"""A grouped GEMV for decode-sized MoE passes: each chosen expert's weights are streamed once.

A decode step sends a handful of rows to each chosen expert; grouped GEMM kernels, tiled for many rows per
group, leave most of the memory bandwidth unused there. Here each program takes one expert and one block of
output columns: it reads the expert's row range from the device-side group offsets (no host
synchronisation, so a CUDA graph can hold it), returns at once for an expert nobody chose, and otherwise
streams the weight block once for all the expert's rows. `expert_gemv_works` checks it against a plain
computation once per device and dtype; callers fall back to `torch._grouped_mm`.
"""

from __future__ import annotations

import functools
import os

import torch

# Triton comes with CUDA builds of torch; the CPU build has none, and then the Triton paths (this module's, and
# the fused and quantized kernels', which import it from here) are off. Without a GPU (or Triton's CPU
# interpreter, which the tests use) it is not imported at all: that saves ~80 MB of resident memory.
triton = tl = None
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    try:
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - depends on the install
        triton = tl = None

MAX_ROWS = 16  # rows per expert the kernel takes in one tile (a decode step of up to 16 sequences)

if triton is not None:

    @triton.jit
    def _expert_gemv_kernel(
        x_ptr,  # [R, K] rows grouped by expert
        w_ptr,  # [E, N, K] stacked expert weights (row-major per expert)
        offs_ptr,  # [E] int32 end row of each expert's group
        out_ptr,  # [R, N]
        N,
        K,
        stride_we,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        e = tl.program_id(0)
        pid_n = tl.program_id(1)
        end = tl.load(offs_ptr + e)
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        if end > start:
            rows = start + tl.arange(0, BLOCK_M)  # [BM]
            row_ok = rows < end
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
            col_ok = cols < N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            w_base = w_ptr + e.to(tl.int64) * stride_we
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_base + cols[:, None] * K + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                acc += tl.dot(x, tl.trans(w))  # [BM, BK] x [BK, BN]
            out = out_ptr + rows[:, None] * N + cols[None, :]
            tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def expert_gemv(
    x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, config: dict[str, int] | None = None
) -> torch.Tensor:
    """out[r] = w[e(r)] @ x[r] for rows grouped by expert (`offs` cumulative ends); at most MAX_ROWS per expert."""
    # x: [R, K] contiguous; w: [E, N, K] with contiguous expert rows; offs: [E] int32 -> [R, N]
    R, K = x.shape
    E, N, _ = w.shape
    assert w.stride(2) == 1 and w.stride(1) == K, "expert weights must have contiguous rows"
    out = torch.empty(R, N, device=x.device, dtype=x.dtype)
    # Measured on an H200 with Mixtral's shapes (scripts/tune_expert_gemv.py): for the narrow w2 output,
    # 64 x 256 tiles, 8 warps and 4 stages keep enough loads in flight per SM (3.75 TB/s at batch 1,
    # against 2.29 TB/s for 32 x 128 tiles and 3 stages).
    if N >= 8192:
        cfg = {"BLOCK_N": 64, "BLOCK_K": 128}
    else:
        cfg = {"BLOCK_N": 64, "BLOCK_K": 256, "num_warps": 8, "num_stages": 4}
    cfg.update(config or {})
    grid = (E, triton.cdiv(N, cfg["BLOCK_N"]))
    _expert_gemv_kernel[grid](x, w, offs, out, N, K, w.stride(0), BLOCK_M=MAX_ROWS, **cfg)
    return out


@functools.cache
def expert_gemv_works(device_type: str, dtype: torch.dtype) -> bool:
    """Run the kernel once on a small problem with an empty expert and compare with a plain computation."""
    if triton is None:
        return False
    try:
        dev = torch.device(device_type)
        g = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(4, 96, 160, generator=g).to(dev, dtype)
        x = torch.randn(5, 160, generator=g).to(dev, dtype)
        counts = [2, 0, 1, 2]
        offs = torch.tensor(counts, dtype=torch.int32).cumsum(0).to(torch.int32).to(dev)
        got = expert_gemv(x, w, offs).float()
        experts = [e for e, n in enumerate(counts) for _ in range(n)]
        want = torch.stack([w[e].float() @ x[i].float() for i, e in enumerate(experts)])
        return bool(((got - want).abs().max() <= 2e-2 * want.abs().max()).item())
    except Exception:  # any failure (compiler, driver, unsupported dtype) means "do not use it"
        return False
