"""A Triton kernel that multiplies by int8 / int4 weights in the stored format, dequantizing in registers.

It serves every quantized matmul on the GPU: rows grouped by expert (`offs` on the device, as in
`moe_triton.py`: no host synchronisation, an expert nobody chose is never read), stacked weights [E, N, K]
in the stored format of `mixchat.quant.format`, a dense projection being E = 1. Each program takes one
expert, one block of output columns and one block of that expert's rows:

- int8: codes are converted to the activations' dtype and the per-channel scale is applied once to the
  float32 accumulator at the end;
- int4: each K block lies inside one group (BLOCK_K divides G), so one scale and one zero per column are
  loaded per block and the tile is dequantized as codes * scale + zero before the dot.

Decode uses 16-row tiles (a step of up to 16 sequences per expert: a grouped GEMV); pre-fill 64-row tiles
over as many row blocks as the pass has tokens (a grouped GEMM). `quant_mm_works` checks the kernel
against the dequantized reference once per device, dtype and format; callers fall back to the reference.
"""

from __future__ import annotations

import functools

import torch

from mixchat.exec.moe_triton import tl, triton  # None where Triton is off (see there)

DECODE_ROWS = 16  # row tile of decode-sized passes
PREFILL_ROWS = 64  # row tile of longer passes

if triton is not None:

    @triton.jit
    def _quant_grouped_kernel(
        x_ptr,  # [R, K] rows grouped by expert
        q_ptr,  # [E, N, K] int8, or [E, N, K / 2] uint8 (two int4 codes a byte)
        s_ptr,  # [E, N] int8 scales, or [E, N, K / G] int4 scales
        z_ptr,  # [E, N, K / G] int4 zeros (unused for int8)
        offs_ptr,  # [E] int32 end row of each expert's group
        out_ptr,  # [R, N]
        N,
        K,
        INT4: tl.constexpr,
        GROUP: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        e = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_m = tl.program_id(2)
        end = tl.load(offs_ptr + e)
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        row0 = start + pid_m * BLOCK_M
        if row0 < end:
            rows = row0 + tl.arange(0, BLOCK_M)  # [BM]
            row_ok = rows < end
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
            col_ok = cols < N
            e64 = e.to(tl.int64)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            n_groups = K // GROUP
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                wmask = col_ok[:, None] & k_ok[None, :]
                if INT4:
                    base = q_ptr + e64 * N * (K // 2)
                    byte = tl.load(base + cols[:, None] * (K // 2) + (ks[None, :] // 2), mask=wmask, other=0)
                    code = (byte.to(tl.int32) >> ((ks[None, :] % 2) * 4)) & 0xF  # [BN, BK]
                    g = k0 // GROUP
                    sz = e64 * N * n_groups + cols * n_groups + g  # [BN]
                    scale = tl.load(s_ptr + sz, mask=col_ok, other=0.0).to(tl.float32)
                    zero = tl.load(z_ptr + sz, mask=col_ok, other=0.0).to(tl.float32)
                    w = code.to(tl.float32) * scale[:, None] + zero[:, None]
                else:
                    base = q_ptr + e64 * N * K
                    w = tl.load(base + cols[:, None] * K + ks[None, :], mask=wmask, other=0).to(tl.float32)
                acc += tl.dot(x, tl.trans(w.to(x.dtype)))  # [BM, BK] x [BK, BN]
            if not INT4:
                acc = acc * tl.load(s_ptr + e64 * N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            out = out_ptr + rows[:, None] * N + cols[None, :]
            tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def quant_grouped_mm(
    x: torch.Tensor,  # [R, K] rows grouped by expert
    qweight: torch.Tensor,  # [E, N, K] int8 or [E, N, K / 2] uint8
    scales: torch.Tensor,  # [E, N] or [E, N, K / G]
    zeros: torch.Tensor | None,  # [E, N, K / G] (int4) or None
    offs: torch.Tensor,  # [E] int32 cumulative row ends
    max_rows: int | None = None,  # most rows any expert can have (default R)
) -> torch.Tensor:  # [R, N] in x's dtype
    """out[r] = dequant(w[e(r)]) @ x[r] for rows grouped by expert, straight from the stored codes."""
    R, K = x.shape
    E, N = qweight.shape[:2]
    int4 = qweight.dtype == torch.uint8
    group = K // scales.shape[-1] if int4 else K
    out = torch.empty(R, N, device=x.device, dtype=x.dtype)
    rows = R if max_rows is None else max_rows
    block_m = DECODE_ROWS if rows <= DECODE_ROWS else PREFILL_ROWS
    block_k = min(group, 64) if int4 else 64
    block_n = 64
    grid = (E, triton.cdiv(N, block_n), max(1, triton.cdiv(rows, block_m)))
    _quant_grouped_kernel[grid](
        x.contiguous(), qweight, scales, zeros if zeros is not None else scales, offs, out, N, K,
        INT4=int4, GROUP=group, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return out


@functools.cache
def quant_mm_works(device_type: str, dtype: torch.dtype, fmt: str) -> bool:
    """Run the kernel once on a small problem with an empty expert and compare with the dequantized weights."""
    if triton is None:
        return False
    from mixchat.quant.format import dequantize, quantize_int4, quantize_int8

    try:
        dev = torch.device(device_type)
        g = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(3, 96, 128, generator=g) * 0.05
        x = torch.randn(5, 128, generator=g)
        counts = [2, 0, 3]
        if fmt == "int8":
            q, s = quantize_int8(w)
            parts = {"qweight": q, "scales": s}
        else:
            q, s, z = quantize_int4(w, 64)
            parts = {"qweight": q, "scales": s, "zeros": z}
        offs = torch.tensor(counts).cumsum(0).to(torch.int32)
        zeros = parts["zeros"].to(dev) if "zeros" in parts else None
        got = (
            quant_grouped_mm(x.to(dev, dtype), parts["qweight"].to(dev), parts["scales"].to(dev), zeros, offs.to(dev))
            .float()
            .cpu()
        )
        wf = dequantize(parts)
        experts = [e for e, n in enumerate(counts) for _ in range(n)]
        want = torch.stack([wf[e] @ x[i].to(dtype).float() for i, e in enumerate(experts)])
        return bool(((got - want).abs().max() <= 2e-2 * want.abs().max()).item())
    except Exception:  # any failure (compiler, driver, unsupported dtype) means "do not use it"
        return False
