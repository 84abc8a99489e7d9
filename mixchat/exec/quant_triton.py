"""Triton kernels that multiply by int8 / int4 weights in the stored format.

Every quantized matmul on the GPU comes here: rows grouped by expert (`offs`, each expert's end row, on the
device), stacked weights [E, N, K] in the stored format of `mixchat.quant.format`, and a dense projection
is the case E = 1. Two ways, by the size of the pass:

- **Streaming** (decode and short passes): each program takes one expert, one block of output columns and
  one block of that expert's rows. It reads its row range from `offs` (no host synchronisation, so a CUDA
  graph can hold it), returns at once for an expert nobody chose (those weights are never read), and
  streams the codes of its column block once for all its rows, dequantizing nothing: int8 codes and int4
  nibbles are exact in bf16, so the dot runs on the codes and the scales are applied to the float32 sums
  (int8: one scale per column at the end; int4: per group, y = scale * (x . codes) + zero * sum(x)). Decode
  is bound by the bytes read, so the tiles are wide in K (many loads in flight per program). The fused
  decode step's SwiGLU pass (`quant_swiglu`) is the same kernel reading w1 and w3 in one program.
- **Dequantize, then GEMM** (long pre-fill passes, at least `DEQUANT_ROWS` tokens): a pass that long is
  bound by arithmetic, and re-reading codes per row tile in a hand-written GEMM loses to the tensor-core
  GEMMs; so one matrix at a time is dequantized to the activations' dtype (reading the codes once, writing
  2 bytes a weight) and multiplied by `torch._grouped_mm` or `F.linear`. The bf16 copy lives only for that
  call.

`quant_mm_problem` checks both against the dequantized reference once per device, dtype and format; on any
failure callers use the reference (`quant_gpu.py`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mixchat.exec.moe_triton import tl, triton  # None where Triton is off (see there)

DECODE_ROWS = 16  # row tile of decode-sized passes (a step of up to 16 sequences per expert)
PREFILL_ROWS = 64  # row tile of the streaming kernel on longer passes
DEQUANT_ROWS = 256  # passes of at least this many tokens dequantize and use a GEMM

if triton is not None:
    from mixchat.exec.moe_triton import swiglu_rounded  # shared with the full-precision expert kernel

    @triton.jit
    def _int8_values(w, dtype: tl.constexpr, CVT: tl.constexpr):
        """int8 codes as the same integers in `dtype`. CVT 1 builds 2^23 + 128 + q as a float32 bit pattern
        and subtracts the constant: integer and float adds only, no int-to-float conversion, whose throughput
        is an eighth of an add's and would bound decode below the memory bandwidth."""
        if CVT == 1:
            u = (w.to(tl.int32) + 128) | 0x4B000000
            return (u.to(tl.float32, bitcast=True) - 8388736.0).to(dtype)
        else:
            return w.to(tl.float32).to(dtype)

    @triton.jit
    def _nibble_values(n, dtype: tl.constexpr, CVT: tl.constexpr):
        """int4 codes (0..15, int32) in `dtype`, plus `_nibble_offset`. CVT 1 ORs the code into the mantissa
        of 128.0 (bf16) or 1024.0 (fp16), exact and conversion-free; the offset is taken out of the group's
        zero term by the caller. float32 uses 2^23 and subtracts it (exact)."""
        if CVT == 1 and dtype == tl.bfloat16:
            return (n | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        elif CVT == 1 and dtype == tl.float16:
            return (n | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        elif CVT == 1:
            return ((n | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0).to(dtype)
        else:
            return n.to(tl.float32).to(dtype)

    @triton.jit
    def _nibble_offset(dtype: tl.constexpr, CVT: tl.constexpr):
        if CVT == 1 and dtype == tl.bfloat16:
            return 128.0
        elif CVT == 1 and dtype == tl.float16:
            return 1024.0
        else:
            return 0.0

    @triton.jit
    def _dot_tile(
        x_rows,
        row_ok,
        q_ptr,
        s_ptr,
        z_ptr,
        e64,
        cols,
        col_ok,
        N,
        K,
        k_lo,
        k_hi,
        INT4: tl.constexpr,
        GROUP: tl.constexpr,
        SUB: tl.constexpr,
        CVT: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """[BM, BN] sums of a tile of rows (tensor-core dots on the codes, exact in the activations' dtype)."""
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        dt = x_rows.dtype.element_ty
        if INT4:
            HALF: tl.constexpr = GROUP // 2
            n_groups = K // GROUP
            q_cols = q_ptr + e64 * N * (K // 2) + cols[:, None].to(tl.int64) * (K // 2)
            sz_cols = e64 * N * n_groups + cols.to(tl.int64) * n_groups  # [BN]
            j = tl.arange(0, HALF)
            off = _nibble_offset(dt, CVT)
            for g0 in range(k_lo // GROUP, k_hi // GROUP, SUB):
                for s in tl.static_range(SUB):
                    g = g0 + s
                    ok = g < n_groups
                    byte = tl.load(q_cols + g * HALF + j[None, :], mask=col_ok[:, None] & ok, other=0).to(tl.int32)
                    m = row_ok[:, None] & ok
                    xe = tl.load(x_rows + g * GROUP + 2 * j[None, :], mask=m, other=0.0)  # [BM, G/2]
                    xo = tl.load(x_rows + g * GROUP + 2 * j[None, :] + 1, mask=m, other=0.0)
                    lo = _nibble_values(byte & 0xF, dt, CVT)  # [BN, G/2]
                    hi = _nibble_values(byte >> 4, dt, CVT)
                    part = tl.dot(xe, tl.trans(lo)) + tl.dot(xo, tl.trans(hi))  # [BM, BN]
                    xsum = tl.sum(xe.to(tl.float32), axis=1) + tl.sum(xo.to(tl.float32), axis=1)  # [BM]
                    scale = tl.load(s_ptr + sz_cols + g, mask=col_ok & ok, other=0.0).to(tl.float32)
                    zero = tl.load(z_ptr + sz_cols + g, mask=col_ok & ok, other=0.0).to(tl.float32) - off * scale
                    acc += part * scale[None, :] + xsum[:, None] * zero[None, :]
        else:
            BLOCK_K: tl.constexpr = SUB * 64
            q_cols = q_ptr + e64 * N * K + cols[:, None].to(tl.int64) * K
            for k0 in range(k_lo, k_hi, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K  # a split's last step stops at the next split's start, or at K
                x = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(q_cols + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0)
                acc += tl.dot(x, tl.trans(_int8_values(w, dt, CVT)))  # [BM, BK] x [BK, BN]
            acc = acc * tl.load(s_ptr + e64 * N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        return acc

    @triton.jit
    def _gemv_tile(
        x_row,
        q_ptr,
        s_ptr,
        z_ptr,
        e64,
        cols,
        col_ok,
        N,
        K,
        k_lo,
        k_hi,
        INT4: tl.constexpr,
        GROUP: tl.constexpr,
        SUB: tl.constexpr,
        CVT: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """[BN] sums for one row (batch-1 decode), without a tensor-core tile of 16 rows to fill.

        int8: float32 multiply-adds into a tile-shaped accumulator, summed once at the end (a reduction
        across threads every step would cost more than the loads). int4 is bound by the instructions that
        unpack its codes, so it spends as few as it can (about four a weight, against six or seven for
        dequantizing each weight): a code c moves into the top of the mantissa of 1.0 by a shift and an
        and-or, giving v = 1 + c / 16 exactly with no conversion; each group's sum of v x is taken before its
        scale, and the 1 comes out with the group's sum of x: sum(c x) = 16 (sum(v x) - sum(x)). x is loaded
        contiguously and split into the even and odd elements that a byte's two nibbles hold."""
        if INT4:
            HALF: tl.constexpr = GROUP // 2
            n_groups = K // GROUP
            q_cols = q_ptr + e64 * N * (K // 2) + cols[:, None, None].to(tl.int64) * (K // 2)
            sz_cols = e64 * N * n_groups + cols[:, None].to(tl.int64) * n_groups  # [BN, 1]
            sub = tl.arange(0, SUB)
            step = sub[:, None] * HALF + tl.arange(0, HALF)[None, :]  # [SUB, G/2] bytes of one step
            elems = sub[:, None] * GROUP + tl.arange(0, GROUP)[None, :]  # [SUB, G] elements of one step
            acc2 = tl.zeros((BLOCK_N, SUB), dtype=tl.float32)
            for g0 in range(k_lo // GROUP, k_hi // GROUP, SUB):
                b = g0 * HALF + step
                m3 = col_ok[:, None, None] & (b < K // 2)[None, :, :]
                byte = tl.load(q_cols + b[None, :, :], mask=m3, other=0).to(tl.int32)  # [BN, SUB, G/2]
                el = g0 * GROUP + elems
                xg = tl.load(x_row + el, mask=el < K, other=0.0).to(tl.float32)  # [SUB, G]
                xe, xo = tl.split(tl.reshape(xg, (SUB, HALF, 2)))  # [SUB, G/2] each
                lo = (((byte << 19) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)  # 1 + c / 16
                hi = (((byte << 15) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
                part = tl.sum(lo * xe[None, :, :] + hi * xo[None, :, :], axis=2)  # [BN, SUB]
                xsum = tl.sum(xe + xo, axis=1)[None, :]  # [1, SUB]
                gs = g0 + sub
                m = col_ok[:, None] & (gs < n_groups)[None, :]
                scale = tl.load(s_ptr + sz_cols + gs[None, :], mask=m, other=0.0).to(tl.float32)
                zero = tl.load(z_ptr + sz_cols + gs[None, :], mask=m, other=0.0).to(tl.float32)
                acc2 += (16.0 * scale) * (part - xsum) + zero * xsum
            acc = tl.sum(acc2, axis=1)
        else:
            BLOCK_K: tl.constexpr = SUB * 64
            q_cols = q_ptr + e64 * N * K + cols[:, None].to(tl.int64) * K
            acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for k0 in range(k_lo, k_hi, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                x = tl.load(x_row + ks, mask=k_ok, other=0.0).to(tl.float32)  # [BK]
                w = tl.load(q_cols + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0)
                acc2 += _int8_values(w, tl.float32, CVT) * x[None, :]
            acc = tl.sum(acc2, axis=1) * tl.load(s_ptr + e64 * N + cols, mask=col_ok, other=0.0).to(tl.float32)
        return acc

    @triton.jit(do_not_specialize=["R", "n_split"])  # one compile for every row count and split
    def _quant_stream_kernel(
        x_ptr,  # [R, K] rows grouped by expert
        q_ptr,  # [E, N, K] int8, or [E, N, K / 2] uint8 (two int4 codes a byte)
        s_ptr,  # [E, N] float32 scales (int8), or [E, N, K / G] (int4)
        z_ptr,  # [E, N, K / G] int4 zeros (unused for int8)
        offs_ptr,  # [E] int32 end row of each expert's group
        out_ptr,  # [R, N] in x's dtype; with n_split > 1, [n_split, R, N] float32 partial sums
        tok_ptr,  # [R] int32 row of x each grouped row reads (SWIGLU only)
        q3_ptr,  # w3's codes, scales and zeros, laid out as w1's (SWIGLU only)
        s3_ptr,
        z3_ptr,
        R,
        N,
        K,
        K_PER,  # elements of K per split: a multiple of the loop step, specialized, so loads stay vectorized
        n_split,  # programs sharing one output block along K (a runtime value: one compile serves every split)
        INT4: tl.constexpr,
        GROUP: tl.constexpr,  # int4 group size (elements); int8: unused
        SUB: tl.constexpr,  # int4: groups per loop step; int8: BLOCK_K = SUB * 64
        BLOCK_M: tl.constexpr,  # 1: one row per program, without tensor cores
        BLOCK_N: tl.constexpr,
        CVT: tl.constexpr,  # how codes become floats (`_int8_values`, `_nibble_values`; not the int4 GEMV's)
        SWIGLU: tl.constexpr,  # out = silu(w1 x) * (w3 x) over x's rows gathered through tok_ptr (no split)
        DENSE: tl.constexpr,  # one matrix and no offs: every row is the only expert's
    ):
        e = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_m = tl.program_id(2) // n_split
        split = tl.program_id(2) % n_split
        if DENSE:
            start = 0
            end = R
        else:
            end = tl.load(offs_ptr + e)
            start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        row0 = start + pid_m * BLOCK_M
        if row0 < end:
            k_lo = split * K_PER
            k_hi = tl.minimum(K, k_lo + K_PER)
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
            col_ok = cols < N
            e64 = e.to(tl.int64)
            out = out_ptr + split.to(tl.int64) * R * N
            dt = out_ptr.dtype.element_ty
            if BLOCK_M == 1:
                tok = tl.load(tok_ptr + row0) if SWIGLU else row0
                x_row = x_ptr + tok.to(tl.int64) * K
                acc = _gemv_tile(
                    x_row, q_ptr, s_ptr, z_ptr, e64, cols, col_ok, N, K, k_lo, k_hi, INT4, GROUP, SUB, CVT, BLOCK_N
                )
                if SWIGLU:
                    acc3 = _gemv_tile(
                        x_row, q3_ptr, s3_ptr, z3_ptr, e64, cols, col_ok, N, K, k_lo, k_hi, INT4, GROUP, SUB, CVT,
                        BLOCK_N,
                    )  # fmt: skip
                    acc = swiglu_rounded(acc, acc3, dt)
                tl.store(out + row0.to(tl.int64) * N + cols, acc.to(dt), mask=col_ok)
            else:
                rows = row0 + tl.arange(0, BLOCK_M)  # [BM]
                row_ok = rows < end
                toks = tl.load(tok_ptr + rows, mask=row_ok, other=0) if SWIGLU else rows
                x_rows = x_ptr + toks[:, None].to(tl.int64) * K
                acc = _dot_tile(
                    x_rows, row_ok, q_ptr, s_ptr, z_ptr, e64, cols, col_ok, N, K, k_lo, k_hi, INT4, GROUP, SUB, CVT,
                    BLOCK_M, BLOCK_N,
                )  # fmt: skip
                if SWIGLU:
                    acc3 = _dot_tile(
                        x_rows, row_ok, q3_ptr, s3_ptr, z3_ptr, e64, cols, col_ok, N, K, k_lo, k_hi, INT4, GROUP, SUB,
                        CVT, BLOCK_M, BLOCK_N,
                    )  # fmt: skip
                    acc = swiglu_rounded(acc, acc3, dt)
                dst = out + rows[:, None].to(tl.int64) * N + cols[None, :]
                tl.store(dst, acc.to(dt), mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _dequant_kernel(
        q_ptr,  # [M, K] int8 or [M, K / 2] uint8, M = E * N rows
        s_ptr,  # [M] (int8) or [M, K / G] (int4)
        z_ptr,  # [M, K / G] (int4)
        out_ptr,  # [M, K] in the activations' dtype
        M,
        K,
        INT4: tl.constexpr,
        GROUP: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_K: tl.constexpr,  # int4: a multiple of GROUP
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
        r64 = r.to(tl.int64)
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
        m = (r < M)[:, None] & (k < K)[None, :]
        if INT4:
            NG: tl.constexpr = BLOCK_K // GROUP
            j = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)  # byte index in the row
            mb = (r < M)[:, None] & (j < K // 2)[None, :]
            byte = tl.load(q_ptr + r64[:, None] * (K // 2) + j[None, :], mask=mb, other=0).to(tl.int32)
            codes = tl.interleave(byte & 0xF, byte >> 4).to(tl.float32)  # [BR, BK] in element order
            g = tl.program_id(1) * NG + tl.arange(0, NG)
            mg = (r < M)[:, None] & (g < K // GROUP)[None, :]
            sz = r64[:, None] * (K // GROUP) + g[None, :]  # [BR, NG]
            scale = tl.load(s_ptr + sz, mask=mg, other=0.0).to(tl.float32)
            zero = tl.load(z_ptr + sz, mask=mg, other=0.0).to(tl.float32)
            w = tl.reshape(codes, (BLOCK_R, NG, GROUP)) * scale[:, :, None] + zero[:, :, None]
            w = tl.reshape(w, (BLOCK_R, BLOCK_K))
        else:
            q = tl.load(q_ptr + r64[:, None] * K + k[None, :], mask=m, other=0).to(tl.float32)
            w = q * tl.load(s_ptr + r64, mask=r < M, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + r64[:, None] * K + k[None, :], w.to(out_ptr.dtype.element_ty), mask=m)


SM_PROGRAMS = 528  # programs a decode pass aims for: four per SM of an H200 (132 SMs), for loads in flight


def stream_config(rows: int, n: int, k: int, int4: bool) -> dict[str, int]:
    """Tile settings of the streaming kernel for a pass of `rows` rows per expert through an [n, k] matrix,
    tuned on an H200 with Mixtral's shapes (scripts/tune_quant_gemv.py, docs/gpu/session7/). One-row passes
    take the tensor-core-free GEMV tile; up to DECODE_ROWS rows a 16-row dot tile; longer passes 64-row
    tiles. SPLIT 0 means "as many K splits as it takes to reach about SM_PROGRAMS programs" (`_splits`)."""
    if rows > DECODE_ROWS:
        return {"BLOCK_M": PREFILL_ROWS, "BLOCK_N": 64, "SUB": 1, "SPLIT": 1, "CVT": 0, "num_warps": 4, "num_stages": 3}
    wide, long = n >= 8192, k >= 8192  # the MoE's w1/w3 and the head; the MoE's w2
    if rows == 1 and int4:  # the GEMV tile, summing per group: 1.4-1.9 TB/s against 1.0-1.3 dequantizing each weight
        block_n, sub = (32, 4) if wide else (32, 8) if long else (16, 16)
        return {"BLOCK_M": 1, "BLOCK_N": block_n, "SUB": sub, "SPLIT": 1, "CVT": 1, "num_warps": 4, "num_stages": 3}
    if rows == 1 and wide:  # int8's big matrices: the dot tile, one row of 16 filled, at 3.2-3.6 TB/s against 2.6-2.8
        return {"BLOCK_M": DECODE_ROWS, "BLOCK_N": 128, "SUB": 2, "SPLIT": 1, "CVT": 0, "num_warps": 8, "num_stages": 4}
    if rows == 1 and long:
        return {"BLOCK_M": DECODE_ROWS, "BLOCK_N": 32, "SUB": 4, "SPLIT": 2, "CVT": 0, "num_warps": 4, "num_stages": 4}
    if rows == 1:  # int8's attention projections: the GEMV tile, streaming long rows in narrow blocks
        return {"BLOCK_M": 1, "BLOCK_N": 8, "SUB": 16, "SPLIT": 1, "CVT": 1, "num_warps": 4, "num_stages": 3}
    if long:  # w2 at batch 8: 4.05 TB/s against 3.81 for 32-column tiles
        return {"BLOCK_M": DECODE_ROWS, "BLOCK_N": 128, "SUB": 2, "SPLIT": 0, "CVT": 0, "num_warps": 8, "num_stages": 4}
    block_n, split = (64, 0) if wide else (32, 1)
    cfg = {"BLOCK_M": DECODE_ROWS, "BLOCK_N": block_n, "SUB": 4, "SPLIT": split, "CVT": 0}
    return cfg | {"num_warps": 4, "num_stages": 4}


def _splits(cfg: dict[str, int], K: int, step: int, programs: int) -> int:
    """The K splits of a pass: cfg's SPLIT, or (0) enough to reach SM_PROGRAMS programs, each split keeping
    at least two loop steps."""
    if cfg["SPLIT"] > 0:
        return cfg["SPLIT"]
    return max(1, min(triton.cdiv(SM_PROGRAMS, programs), K // (2 * step)))


Stored = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # qweight, scales, zeros (int4) of one matrix


def quant_grouped_mm(
    x: torch.Tensor,  # [R, K] rows grouped by expert
    qweight: torch.Tensor,  # [E, N, K] int8 or [E, N, K / 2] uint8
    scales: torch.Tensor,  # [E, N] or [E, N, K / G]
    zeros: torch.Tensor | None,  # [E, N, K / G] (int4) or None
    offs: torch.Tensor | None,  # [E] int32 cumulative row ends; None: E = 1, every row its (no offs to fill)
    max_rows: int | None = None,  # most rows any expert can have (default R)
    config: dict[str, int] | None = None,  # the streaming kernel's tiles (scripts/tune_quant_gemv.py)
) -> torch.Tensor:  # [R, N] in x's dtype
    """out[r] = dequant(w[e(r)]) @ x[r] for rows grouped by expert, from the stored codes."""
    R, E = x.shape[0], qweight.shape[0]
    rows = R if max_rows is None else max_rows
    x = x.contiguous()
    if rows >= DEQUANT_ROWS and config is None and _gemm_serves(x, E):
        w = dequantize_stacked(qweight, scales, zeros, x.dtype)  # [E, N, K]
        return F.linear(x, w[0]) if E == 1 else torch._grouped_mm(x, w.transpose(1, 2), offs=offs)
    return _stream(x, (qweight, scales, zeros), offs, R, rows, config)


def quant_swiglu(
    x: torch.Tensor,  # [T, K] tokens
    w1: Stored,  # [E, F, K(/2)] codes and their scales
    w3: Stored,
    offs: torch.Tensor,  # [E] int32 cumulative row ends
    token_of: torch.Tensor,  # [R] int32 token of each row grouped by expert
    max_rows: int,  # most rows any expert can have
    config: dict[str, int] | None = None,
) -> torch.Tensor:  # [R, F] in x's dtype
    """silu(w1[e(r)] x[token_of[r]]) * (w3[e(r)] x[token_of[r]]): the MoE's first half in one pass, reading
    each chosen expert's w1 and w3 codes once (the fused decode step's, `graphs.py`)."""
    return _stream(x.contiguous(), w1, offs, token_of.shape[0], max_rows, config, w3=w3, token_of=token_of)


def _stream(
    x: torch.Tensor,
    w: Stored,
    offs: torch.Tensor | None,
    R: int,  # output rows
    rows: int,
    config: dict[str, int] | None,
    w3: Stored | None = None,
    token_of: torch.Tensor | None = None,
) -> torch.Tensor:
    """The streaming kernel's launch: tiles from `stream_config`, K split where that fills the GPU (never
    with SWIGLU, whose nonlinearity needs whole sums)."""
    qweight, scales, zeros = w
    K = x.shape[1]
    E, N = qweight.shape[:2]
    int4 = qweight.dtype == torch.uint8
    cfg = stream_config(rows, N, K, int4)
    cfg.update(config or {})
    if w3 is not None:
        cfg["SPLIT"] = 1
    group = K // scales.shape[-1] if int4 else 64
    step = cfg["SUB"] * group
    m_blocks = max(1, triton.cdiv(rows, cfg["BLOCK_M"]))
    n_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    split = _splits(cfg, K, step, min(E, R) * n_blocks * m_blocks)  # at most min(E, R) experts have rows
    k_per = triton.cdiv(triton.cdiv(K, split), step) * step
    split = triton.cdiv(K, k_per)
    del cfg["SPLIT"]
    shape, kind = ((R, N), x.dtype) if split == 1 else ((split, R, N), torch.float32)
    out = torch.empty(shape, device=x.device, dtype=kind)
    z = zeros if zeros is not None else scales
    q3, s3, z3 = w3 if w3 is not None else w
    grid = (E, n_blocks, m_blocks * split)
    _quant_stream_kernel[grid](
        x, qweight, scales, z, x if offs is None else offs, out, x if token_of is None else token_of,
        q3, s3, z if z3 is None else z3, R, N, K, k_per, split,
        INT4=int4, GROUP=group, SWIGLU=w3 is not None, DENSE=offs is None, **cfg,
    )  # fmt: skip
    return out if split == 1 else out.sum(0).to(x.dtype)


def _gemm_serves(x: torch.Tensor, experts: int) -> bool:
    """Whether the dequantize-then-GEMM way can take this pass (a grouped GEMM needs bf16 on CUDA)."""
    if experts == 1:
        return True
    from mixchat.exec.moe_grouped import grouped_mm_works

    return x.is_cuda and x.dtype == torch.bfloat16 and grouped_mm_works(x.device.type, x.dtype)


def dequantize_stacked(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """[E, N, K] weights in `dtype` from stacked stored codes, in one pass over the codes."""
    E, N = qweight.shape[:2]
    int4 = qweight.dtype == torch.uint8
    K = qweight.shape[2] * (2 if int4 else 1)
    group = K // scales.shape[-1] if int4 else 1
    out = torch.empty(E, N, K, device=qweight.device, dtype=dtype)
    block_r, block_k = 32, 256
    grid = (triton.cdiv(E * N, block_r), triton.cdiv(K, block_k))
    z = zeros if zeros is not None else scales
    _dequant_kernel[grid](qweight, scales, z, out, E * N, K, INT4=int4, GROUP=group, BLOCK_R=block_r, BLOCK_K=block_k)
    return out


def quant_mm_problem(device_type: str, dtype: torch.dtype, fmt: str) -> str | None:
    """What is wrong with the kernels here (None: both ways match the dequantized weights). Runs a small
    problem with an empty expert through the streaming kernel (the one-row, decode and pre-fill tiles) and
    through the dequantize-then-GEMM way."""
    if triton is None:
        return "triton is not installed"
    from mixchat.quant.format import dequantize, quantize_int4, quantize_int8

    try:
        dev = torch.device(device_type)
        g = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(3, 96, 256, generator=g) * 0.05
        if fmt == "int8":
            q, s = quantize_int8(w)
            parts = {"qweight": q, "scales": s}
        else:
            q, s, z = quantize_int4(w, 64)
            parts = {"qweight": q, "scales": s, "zeros": z}
        wf = dequantize(parts)
        dp = {k: v.to(dev) for k, v in parts.items()}
        for counts in ([1, 0, 1], [2, 0, 3], [70, 0, 5], [DEQUANT_ROWS, 0, 9]):  # each way and tile
            x = torch.randn(sum(counts), 256, generator=g)
            offs = torch.tensor(counts).cumsum(0).to(torch.int32)
            got = quant_grouped_mm(x.to(dev, dtype), dp["qweight"], dp["scales"], dp.get("zeros"), offs.to(dev))
            experts = [e for e, n in enumerate(counts) for _ in range(n)]
            want = torch.stack([wf[e] @ x[i].to(dtype).float() for i, e in enumerate(experts)])
            err = float((got.float().cpu() - want).abs().max() / want.abs().max())
            if not err <= 2e-2:
                return f"{fmt} {dtype}, rows per expert {counts}: relative error {err:.2e}"
        return None
    except Exception as exc:  # any failure (compiler, driver, unsupported dtype) means "do not use it"
        return f"{fmt} {dtype}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@functools.cache
def quant_mm_works(device_type: str, dtype: torch.dtype, fmt: str) -> bool:
    """The probe callers consult (once per device, dtype and format)."""
    return quant_mm_problem(device_type, dtype, fmt) is None
