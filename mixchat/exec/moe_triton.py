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
from collections.abc import Callable
from typing import Any

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
    def swiglu_rounded(acc1, acc3, dt: tl.constexpr):
        """silu(a1) * a3 from float32 sums, rounded to `dt` where torch rounds: the two matmul outputs,
        silu's output, then the product (the caller casts the result)."""
        a1 = acc1.to(dt).to(tl.float32)
        g = (a1 / (1.0 + tl.exp(-a1))).to(dt).to(tl.float32)
        return g * acc3.to(dt).to(tl.float32)

    @triton.jit
    def _expert_gemv_kernel(
        x_ptr,  # [T, K] rows: grouped by expert, or with SWIGLU token rows gathered through tok_ptr
        tok_ptr,  # [R] int32 token of each grouped row (SWIGLU only)
        w1_ptr,  # [E, N, K] stacked expert weights (rows contiguous)
        w3_ptr,  # [E, N, K] (SWIGLU only)
        offs_ptr,  # [E] int32 end row of each expert's group
        out_ptr,  # [R, N] grouped rows
        N,
        K,
        stride_x,
        stride_w1e,
        stride_w1n,
        stride_w3e,
        stride_w3n,
        SWIGLU: tl.constexpr,  # out = silu(w1 x) * (w3 x), else w1 x
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        e = tl.program_id(0)
        pid_n = tl.program_id(1)
        end = tl.load(offs_ptr + e)
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        if end > start:  # an expert nobody chose returns before reading its weights
            rows = start + tl.arange(0, BLOCK_M)  # [BM]
            row_ok = rows < end
            toks = rows.to(tl.int64)  # the row of x each grouped row reads
            if SWIGLU:
                toks = tl.load(tok_ptr + rows, mask=row_ok, other=0).to(tl.int64)
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
            col_ok = cols < N
            acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            w1_base = w1_ptr + e.to(tl.int64) * stride_w1e
            w3_base = w3_ptr + e.to(tl.int64) * stride_w3e
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                xmask = row_ok[:, None] & k_ok[None, :]
                x = tl.load(x_ptr + toks[:, None] * stride_x + ks[None, :], mask=xmask, other=0.0)
                wmask = col_ok[:, None] & k_ok[None, :]
                w1 = tl.load(w1_base + cols[:, None] * stride_w1n + ks[None, :], mask=wmask, other=0.0)
                acc1 += tl.dot(x, tl.trans(w1))  # [BM, BK] x [BK, BN]
                if SWIGLU:
                    w3 = tl.load(w3_base + cols[:, None] * stride_w3n + ks[None, :], mask=wmask, other=0.0)
                    acc3 += tl.dot(x, tl.trans(w3))
            dt = out_ptr.dtype.element_ty
            out = out_ptr + rows[:, None] * N + cols[None, :]
            if SWIGLU:
                acc1 = swiglu_rounded(acc1, acc3, dt)
            tl.store(out, acc1.to(dt), mask=row_ok[:, None] & col_ok[None, :])


def launch_expert_gemv(
    x: torch.Tensor,
    w1: torch.Tensor,
    offs: torch.Tensor,
    cfg: dict[str, int],
    w3: torch.Tensor | None = None,
    token_of: torch.Tensor | None = None,
) -> torch.Tensor:
    """The expert kernel over rows grouped by expert (`offs` cumulative ends, at most MAX_ROWS per expert):
    w1[e] @ x[r], or with `w3` and `token_of` silu(w1[e] @ x[token_of[r]]) * (w3[e] @ x[token_of[r]])."""
    # x: [R or T, K] (unit column stride); w1, w3: [E, N, K] with contiguous rows; token_of: [R] int32 -> [R, N]
    E, N, K = w1.shape
    R = x.shape[0] if token_of is None else token_of.shape[0]
    assert x.stride(1) == 1 and all(w.stride(2) == 1 for w in (w1, w3) if w is not None), "rows must be contiguous"
    out = torch.empty(R, N, device=x.device, dtype=x.dtype)
    w3_ = w1 if w3 is None else w3  # not read without SWIGLU
    grid = (E, triton.cdiv(N, cfg["BLOCK_N"]))
    _expert_gemv_kernel[grid](
        x, x if token_of is None else token_of, w1, w3_, offs, out, N, K, x.stride(0),
        w1.stride(0), w1.stride(1), w3_.stride(0), w3_.stride(1),
        SWIGLU=w3 is not None, BLOCK_M=MAX_ROWS, **cfg,
    )  # fmt: skip
    return out


def expert_gemv(
    x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, config: dict[str, int] | None = None
) -> torch.Tensor:
    """out[r] = w[e(r)] @ x[r] for rows grouped by expert (`offs` cumulative ends); at most MAX_ROWS per expert."""
    # x: [R, K]; w: [E, N, K] with contiguous expert rows; offs: [E] int32 -> [R, N]
    # Measured on an H200 with Mixtral's shapes (scripts/tune_expert_gemv.py): for the narrow w2 output,
    # 64 x 256 tiles, 8 warps and 4 stages keep enough loads in flight per SM (3.75 TB/s at batch 1,
    # against 2.29 TB/s for 32 x 128 tiles and 3 stages).
    if w.shape[1] >= 8192:
        cfg = {"BLOCK_N": 64, "BLOCK_K": 128}
    else:
        cfg = {"BLOCK_N": 64, "BLOCK_K": 256, "num_warps": 8, "num_stages": 4}
    return launch_expert_gemv(x, w, offs, {**cfg, **(config or {})})


def triton_probe(check: Callable[..., str | None]) -> Callable[..., bool]:
    """A kernel's probe, made from `check(device, dtype, *args)`, which runs the kernel once on a small
    problem and says what differs from plain torch (None: nothing). The probe answers once per arguments
    (cached): False where Triton is off or the check raises, since any failure (compiler, driver,
    unsupported dtype) means "do not use it". `probe.problem(device_type, dtype, *args)` says what is wrong."""

    def problem(device_type: str, dtype: torch.dtype, *args: Any) -> str | None:
        if triton is None:
            return "triton is not installed"
        try:
            return check(torch.device(device_type), dtype, *args)
        except Exception as exc:
            return f"{dtype}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    @functools.cache
    def works(device_type: str, dtype: torch.dtype, *args: Any) -> bool:
        return problem(device_type, dtype, *args) is None

    works.problem = problem  # type: ignore[attr-defined]
    return functools.update_wrapper(works, check)


def mismatch(what: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> str | None:
    """None where `got` is `want` within `tol` (relative to 1 + want's largest magnitude), else what differs."""
    err = float((got.float() - want.float()).abs().max())
    return None if err <= tol * (1.0 + float(want.float().abs().max())) else f"{what}: error {err:.2e}"


@triton_probe
def expert_gemv_works(dev: torch.device, dtype: torch.dtype) -> str | None:
    """The kernel once on a small problem with an empty expert, against a plain computation."""
    g = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(4, 96, 160, generator=g).to(dev, dtype)
    x = torch.randn(5, 160, generator=g).to(dev, dtype)
    counts = [2, 0, 1, 2]
    offs = torch.tensor(counts, dtype=torch.int32).cumsum(0).to(torch.int32).to(dev)
    got = expert_gemv(x, w, offs).float()
    experts = [e for e, n in enumerate(counts) for _ in range(n)]
    want = torch.stack([w[e].float() @ x[i].float() for i, e in enumerate(experts)])
    err = float((got - want).abs().max() / want.abs().max())
    return None if err <= 2e-2 else f"expert_gemv {dtype}: relative error {err:.2e}"
