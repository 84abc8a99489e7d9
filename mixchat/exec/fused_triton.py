"""Fused Triton kernels for the GPU decode step (and the pre-fill's norms): fewer, larger launches.

A batch-1 Mixtral decode step reads ~6 ms of weights on an H200 but ran at ~12.6 ms inside its CUDA graph,
because every layer was ~60 tiny kernels: RMSNorm as eight elementwise kernels (twice a layer), RoPE as
three per tensor, two cache writes, and a dozen for the MoE routing bookkeeping and combine. Each of them
moves a few kilobytes, so their launch and drain time is what the step pays for. The kernels here
(`add_rmsnorm`, `rope_store`, `route_topk`, `expert_gemv_swiglu`, `combine_add_rmsnorm`) do the same
arithmetic in a handful of launches.

Every kernel rounds where the torch reference rounds (a bf16 result wherever torch produced a bf16 tensor),
so the fused step equals the unfused one up to float32 reduction order. Triton is optional, as in
`moe_triton.py`: `fused_decode_works` / `fused_norm_works` run the kernels once on a small problem against
plain torch and say False on any failure, and callers then keep the unfused path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mixchat.exec.moe_triton import expert_gemv, launch_expert_gemv, mismatch, tl, triton, triton_probe
from mixchat.model.layers import RMSNorm, top_k_routing
from mixchat.model.rope import Rotary, apply_rotary

ROUTE_MAX_ASSIGN = 128  # token-expert assignments `route_topk` takes in its single program (16 tokens x 8)
ROUTE_MAX_EXPERTS = 64

if triton is not None:

    @triton.jit
    def _norm_rows_store(hf, w_ptr, x_row_ptr, cols, ok, D, eps):
        """x = (hf * rsqrt(mean(hf^2) + eps)) rounded to x's dtype, times weight, rounded again (RMSNorm)."""
        ms = tl.sum(hf * hf, axis=0) / D
        r = tl.rsqrt(ms + eps)
        dt = x_row_ptr.dtype.element_ty
        xn = (hf * r).to(dt).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(x_row_ptr + cols, (xn * w).to(dt), mask=ok)

    @triton.jit
    def _add_rmsnorm_kernel(
        h_ptr,  # [R, D] residual stream
        d_ptr,  # [R, D] what is added to it (ignored without HAS_DELTA)
        w_ptr,  # [D] norm weight
        hout_ptr,  # [R, D] h + delta (ignored without HAS_DELTA)
        x_ptr,  # [R, D] normalised output
        D,
        stride_h,
        stride_d,
        stride_ho,
        stride_x,
        eps,
        HAS_DELTA: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < D
        h = tl.load(h_ptr + row * stride_h + cols, mask=ok, other=0.0)
        if HAS_DELTA:
            d = tl.load(d_ptr + row * stride_d + cols, mask=ok, other=0.0)
            h = (h.to(tl.float32) + d.to(tl.float32)).to(hout_ptr.dtype.element_ty)  # torch's add: one rounding
            tl.store(hout_ptr + row * stride_ho + cols, h, mask=ok)
        _norm_rows_store(h.to(tl.float32), w_ptr, x_ptr + row * stride_x, cols, ok, D, eps)

    @triton.jit
    def _rope_store_kernel(
        q_ptr,  # [B, H, hd] (row stride stride_qb, heads contiguous)
        k_ptr,  # [B, Hkv, hd]
        v_ptr,  # [B, Hkv, hd]
        cs_ptr,  # [B, hd/2, 2] float32 (cos, sin) per pair
        qout_ptr,  # [B, H, hd] contiguous
        kc_ptr,  # [Bc*S, Hkv, hd] key cache, flat slots
        vc_ptr,  # [Bc*S, Hkv, hd]
        slots_ptr,  # [B] int64 flat slot of each row's token
        H,
        stride_qb,
        stride_kb,
        stride_vb,
        stride_kcs,
        stride_vcs,
        HALF,
        BLOCK: tl.constexpr,
    ):
        b = tl.program_id(0)
        hh = tl.program_id(1)  # q heads first, then kv heads
        i = tl.arange(0, BLOCK)
        ok = i < HALF
        c = tl.load(cs_ptr + b * HALF * 2 + 2 * i, mask=ok, other=0.0)
        s = tl.load(cs_ptr + b * HALF * 2 + 2 * i + 1, mask=ok, other=0.0)
        if hh < H:
            src = q_ptr + b.to(tl.int64) * stride_qb + hh * 2 * HALF
            dst = qout_ptr + (b.to(tl.int64) * H + hh) * 2 * HALF
        else:
            kh = hh - H
            slot = tl.load(slots_ptr + b).to(tl.int64)
            src = k_ptr + b.to(tl.int64) * stride_kb + kh * 2 * HALF
            dst = kc_ptr + slot * stride_kcs + kh * 2 * HALF
            vsrc = v_ptr + b.to(tl.int64) * stride_vb + kh * 2 * HALF + tl.arange(0, 2 * BLOCK)
            vok = tl.arange(0, 2 * BLOCK) < 2 * HALF
            vdst = vc_ptr + slot * stride_vcs + kh * 2 * HALF + tl.arange(0, 2 * BLOCK)
            tl.store(vdst, tl.load(vsrc, mask=vok, other=0.0), mask=vok)
        xe = tl.load(src + 2 * i, mask=ok, other=0.0).to(tl.float32)
        xo = tl.load(src + 2 * i + 1, mask=ok, other=0.0).to(tl.float32)
        # (xe + i xo) * (c + i s), the complex product of rope.apply_rotary, rounded once.
        re = xe * c - xo * s
        im = xe * s + xo * c
        dt = dst.dtype.element_ty
        tl.store(dst + 2 * i, re.to(dt), mask=ok)
        tl.store(dst + 2 * i + 1, im.to(dt), mask=ok)

    @triton.jit
    def _route_topk_kernel(
        logits_ptr,  # [T, E] gate logits
        stride_l,
        experts_ptr,  # [T, K] int64 out
        weights_ptr,  # [T, K] float32 out
        offs_ptr,  # [E] int32 out: end row of each expert's group
        token_of_ptr,  # [T*K] int32 out: token of each sorted assignment
        slot_ptr,  # [T, K] int32 out: sorted row of each token's assignments, ascending
        slot_w_ptr,  # [T, K] float32 out: their routing weights
        T,
        E,
        K: tl.constexpr,
        BA: tl.constexpr,  # power of two >= T*K
        BE: tl.constexpr,  # power of two >= E
    ):
        # One row per assignment a = t*K + j (the token's logits repeated K times), so everything after the
        # top-k is a 1-D vector over assignments and the sort is a [BA, BA] comparison.
        a = tl.arange(0, BA)
        a_ok = a < T * K
        t = a // K
        j = a % K
        e = tl.arange(0, BE)
        e_ok = e < E
        L = tl.load(
            logits_ptr + t[:, None] * stride_l + e[None, :], mask=a_ok[:, None] & e_ok[None, :], other=float("-inf")
        ).to(tl.float32)  # [BA, BE]
        free = (e_ok[None, :] & (a[:, None] >= 0)).to(tl.int32)  # experts not chosen yet
        m0 = tl.max(L, axis=1)  # the largest logit, the softmax shift
        ex = tl.zeros([BA], dtype=tl.int32)
        val = tl.zeros([BA], dtype=tl.float32)
        den = tl.zeros([BA], dtype=tl.float32)
        for r in range(K):
            cand = tl.where(free != 0, L, float("-inf"))
            m = tl.max(cand, axis=1)
            # Ties go to the lowest expert index (what torch.topk gives on the CPU; CUDA does not promise it).
            idx = tl.min(tl.where((cand == m[:, None]) & (free != 0), e[None, :], BE), axis=1)
            idx = tl.minimum(idx, E - 1)  # a NaN row matches nothing: keep the index in range
            free = tl.where(e[None, :] == idx[:, None], 0, free)
            ex = tl.where(j == r, idx, ex)
            val = tl.where(j == r, m, val)
            den += tl.exp(m - m0)
        wt = tl.exp(val - m0) / den  # softmax over the K chosen logits, float32
        tl.store(experts_ptr + a, ex.to(tl.int64), mask=a_ok)
        tl.store(weights_ptr + a, wt, mask=a_ok)
        # Stable sort by expert: sorted row = assignments with a smaller expert + earlier ones with the same.
        exc = ex[:, None]
        exr = ex[None, :]
        valid_r = a_ok[None, :]
        less = tl.sum(((exr < exc) & valid_r).to(tl.int32), axis=1)
        same_before = tl.sum(((exr == exc) & (a[None, :] < a[:, None]) & valid_r).to(tl.int32), axis=1)
        pos = less + same_before  # [BA]
        tl.store(token_of_ptr + pos, t.to(tl.int32), mask=a_ok)
        # A token's assignments in sorted-row order (its experts are distinct, so: by expert).
        rank = tl.sum(((t[None, :] == t[:, None]) & (exr < exc) & valid_r).to(tl.int32), axis=1)
        tl.store(slot_ptr + t * K + rank, pos, mask=a_ok)
        tl.store(slot_w_ptr + t * K + rank, wt, mask=a_ok)
        ends = tl.sum(((ex[:, None] <= e[None, :]) & a_ok[:, None]).to(tl.int32), axis=0)  # [BE]
        tl.store(offs_ptr + e, ends, mask=e_ok)

    @triton.jit
    def _combine_add_rmsnorm_kernel(
        h_ptr,  # [T, D] residual stream
        ys_ptr,  # [T*K, D] expert outputs in sorted (grouped) order
        slot_ptr,  # [T, K] int32 sorted row of each of the token's assignments, ascending
        slot_w_ptr,  # [T, K] float32 routing weights
        w_ptr,  # [D] next norm's weight
        hout_ptr,  # [T, D]
        x_ptr,  # [T, D]
        D,
        eps,
        K: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        t = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < D
        dt = hout_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for r in range(K):
            p = tl.load(slot_ptr + t * K + r).to(tl.int64)
            wt = tl.load(slot_w_ptr + t * K + r).to(dt).to(tl.float32)  # the reference casts the weight first
            y = tl.load(ys_ptr + p * D + cols, mask=ok, other=0.0).to(tl.float32)
            term = (y * wt).to(dt).to(tl.float32)
            acc = (acc + term).to(dt).to(tl.float32)  # index_add_ in sorted order, rounded each time
        h = tl.load(h_ptr + t * D + cols, mask=ok, other=0.0).to(tl.float32)
        h = (h + acc).to(dt)
        tl.store(hout_ptr + t * D + cols, h, mask=ok)
        _norm_rows_store(h.to(tl.float32), w_ptr, x_ptr + t * D, cols, ok, D, eps)


def _rows(t: torch.Tensor) -> torch.Tensor:
    # [..., D] -> [R, D] with unit column stride (a view when possible)
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _norm_warps(block: int) -> int:
    return 4 if block <= 2048 else (8 if block <= 8192 else 16)


def add_rmsnorm(
    h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + delta, RMSNorm(h + delta)) in one pass over each row (held whole in registers); with delta None,
    (h, RMSNorm(h)). Rounds as `h + delta` and `layers.RMSNorm.forward` do.
    """
    # h, delta: [..., D]; weight: [D] of h's dtype -> two tensors shaped like h
    D = h.shape[-1]
    h2 = _rows(h)
    R = h2.shape[0]
    x = torch.empty(R, D, device=h.device, dtype=h.dtype)
    d2 = h2 if delta is None else _rows(delta)
    h_new = h2 if delta is None else torch.empty(R, D, device=h.device, dtype=h.dtype)
    block = triton.next_power_of_2(D)
    _add_rmsnorm_kernel[(R,)](
        h2, d2, weight, h_new, x, D, h2.stride(0), d2.stride(0), h_new.stride(0), D, eps,
        HAS_DELTA=delta is not None, BLOCK=block, num_warps=_norm_warps(block),
    )  # fmt: skip
    return (h if delta is None else h_new.view(h.shape)), x.view(h.shape)


def add_norm(h: torch.Tensor, delta: torch.Tensor, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """`add_rmsnorm` with a norm module's weight and eps: a block's residual add and the norm after it."""
    return add_rmsnorm(h, delta, norm.weight, norm.eps)


def rmsnorm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`layers.RMSNorm.forward` as one kernel (instead of eight elementwise ones)."""
    return add_rmsnorm(h, None, weight, eps)[1]


def rope_store(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """Rotate q and k (rope.apply_rotary), store rotated k and raw v at `slots`; return rotated q.

    One kernel instead of two RoPE applications (three kernels each) and two `index_copy_` cache writes:
    program (b, head) rotates one q head, or one k head and copies the matching v head into the cache.
    `cos_sin` is `view_as_real(rotary.rotation(pos))`, computed once per step and shared by all layers.
    """
    # q: [B, H, hd], k/v: [B, Hkv, hd] (any row stride, heads contiguous); cos_sin: [B, hd/2, 2] float32;
    # k_cache/v_cache: [Bc*S, Hkv, hd] contiguous per slot; slots: [B] int64 -> q rotated [B, H, hd]
    B, H, hd = q.shape
    Hkv = k.shape[1]
    for t in (q, k, v):
        assert t.stride(2) == 1 and t.stride(1) == hd, "heads must be contiguous within a row"
    for c in (k_cache, v_cache):
        assert c.stride(2) == 1 and c.stride(1) == hd
    cs = cos_sin.reshape(B, hd // 2, 2).contiguous()
    q_out = torch.empty(B, H, hd, device=q.device, dtype=q.dtype)
    half = hd // 2
    _rope_store_kernel[(B, H + Hkv)](
        q, k, v, cs, q_out, k_cache, v_cache, slots, H,
        q.stride(0), k.stride(0), v.stride(0), k_cache.stride(0), v_cache.stride(0), half,
        BLOCK=triton.next_power_of_2(half),
    )  # fmt: skip
    return q_out


class Routed(NamedTuple):
    """What `route_topk` hands the expert kernels (and the routing trace)."""

    experts: torch.Tensor  # [T, k] int64, strongest first
    weights: torch.Tensor  # [T, k] float32 softmax over the k chosen logits
    offs: torch.Tensor  # [E] int32 end row of each expert's group in the sorted order
    token_of: torch.Tensor  # [T*k] int32 token of each sorted row
    slot: torch.Tensor  # [T, k] int32 sorted rows of each token's assignments, ascending
    slot_weight: torch.Tensor  # [T, k] float32 their routing weights


def route_fits(T: int, k: int, E: int) -> bool:
    """Whether `route_topk` takes this problem in its single program."""
    return T * k <= ROUTE_MAX_ASSIGN and E <= ROUTE_MAX_EXPERTS


def route_topk(logits: torch.Tensor, k: int) -> Routed:
    """Top-k routing and expert grouping of a decode-sized pass: what `MoeLayer.route` and
    `grouped_moe_forward` do before the expert GEMMs in ten launches, in one program.

    Ties go to the lower expert index (torch.topk does so on the CPU but promises no order on CUDA, so
    exactly tied logits may pick another expert there). A NaN logit is never chosen (torch.topk takes it).
    """
    # logits: [T, E]
    T, E = logits.shape
    assert route_fits(T, k, E), "route_topk takes at most ROUTE_MAX_ASSIGN assignments"
    dev = logits.device
    experts = torch.empty(T, k, device=dev, dtype=torch.int64)
    weights = torch.empty(T, k, device=dev, dtype=torch.float32)
    offs = torch.empty(E, device=dev, dtype=torch.int32)
    token_of = torch.empty(T * k, device=dev, dtype=torch.int32)
    slot = torch.empty(T, k, device=dev, dtype=torch.int32)
    slot_weight = torch.empty(T, k, device=dev, dtype=torch.float32)
    _route_topk_kernel[(1,)](
        logits, logits.stride(0), experts, weights, offs, token_of, slot, slot_weight, T, E,
        K=k, BA=max(16, triton.next_power_of_2(T * k)), BE=max(16, triton.next_power_of_2(E)), num_warps=4,
    )  # fmt: skip
    return Routed(experts, weights, offs, token_of, slot, slot_weight)


def expert_gemv_swiglu(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    offs: torch.Tensor,
    token_of: torch.Tensor,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """silu(w1[e] @ x[token_of[r]]) * (w3[e] @ x[token_of[r]]) for rows r grouped by expert (at most
    `MAX_ROWS` per expert), in one kernel instead of five: a program streams one column block of one
    expert's w1 and w3, gathers its rows through `token_of` and applies the SwiGLU in registers.
    """
    # x: [T, K]; w1, w3: [E, N, K] (rows contiguous); offs: [E] int32; token_of: [R] int32 -> [R, N]
    # Two weight tiles per program, so a narrow column block; long K steps and 4 stages measured best on an
    # H200 with Mixtral's shapes (scripts/tune_expert_gemv.py: 4.0 TB/s at batch 1, 4.4 at batch 8).
    cfg = {"BLOCK_N": 32, "BLOCK_K": 256, "num_warps": 4, "num_stages": 4, **(config or {})}
    return launch_expert_gemv(x, w1, offs, cfg, w3, token_of)


def combine_add_rmsnorm(
    h: torch.Tensor, ys: torch.Tensor, routed: Routed, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + moe, RMSNorm(h + moe)) with moe[t] = sum over t's assignments of (ys[row] * weight) in dtype,
    in sorted row order and rounded after each add, as the reference's `index_add_` into a bf16 tensor.
    """
    # h: [T, D]; ys: [T*k, D] sorted rows; weight: [D] -> two [T, D]
    T, D = h.shape
    k = routed.slot.shape[1]
    assert h.is_contiguous() and ys.is_contiguous()
    h_new = torch.empty_like(h)
    x = torch.empty_like(h)
    block = triton.next_power_of_2(D)
    _combine_add_rmsnorm_kernel[(T,)](
        h, ys, routed.slot, routed.slot_weight, weight, h_new, x, D, eps,
        K=k, BLOCK=block, num_warps=_norm_warps(block),
    )  # fmt: skip
    return h_new, x


# ---- probes (see `moe_triton.triton_probe`) -----------------------------------------------------------------
def _ref_norm(h: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    hf = h.float()
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).type_as(h) * w


@triton_probe
def fused_norm_works(dev: torch.device, dtype: torch.dtype) -> str | None:
    """`add_rmsnorm` once on a small problem, against the torch computation."""
    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(3, 96, generator=g).to(dev, dtype)
    d = torch.randn(3, 96, generator=g).to(dev, dtype)
    w = (1 + 0.1 * torch.randn(96, generator=g)).to(dev, dtype)
    h_new, x = add_rmsnorm(h, d, w, 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    return mismatch("add", h_new, h + d, tol) or mismatch("rmsnorm", x, _ref_norm(h + d, w, 1e-5), tol)


@triton_probe
def fused_decode_works(dev: torch.device, dtype: torch.dtype) -> str | None:
    """All decode kernels, once each on a small problem (an expert with no token included), against torch."""
    if not fused_norm_works(dev.type, dtype):
        return "the norm kernel fails its probe"
    g = torch.Generator(device="cpu").manual_seed(1)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    # rope_store
    B, H, Hkv, hd, S = 2, 4, 2, 16, 5
    q, k, v = (torch.randn(B, n, hd, generator=g).to(dev, dtype) for n in (H, Hkv, Hkv))
    rot = Rotary(hd, 10000.0).rotation(torch.tensor([3, 70], device=dev))
    kc = torch.zeros(B * S, Hkv, hd, device=dev, dtype=dtype)
    vc = torch.zeros_like(kc)
    slots = torch.tensor([1, 7], device=dev)
    qr = rope_store(q, k, v, torch.view_as_real(rot), kc, vc, slots)
    problem = mismatch("rope_store q", qr, apply_rotary(q, rot), tol)
    problem = problem or mismatch("rope_store k", kc[slots], apply_rotary(k, rot), tol)
    problem = problem or mismatch("rope_store v", vc[slots], v, 0.0)
    # route_topk + expert kernels + combine
    T, E, kk, D, F = 3, 8, 2, 32, 48
    logits = torch.randn(T, E, generator=g).to(dev, dtype)
    r = route_topk(logits, kk)
    experts, weights = top_k_routing(logits, kk)
    counts = torch.bincount(experts.reshape(-1), minlength=E)
    if not (torch.equal(r.experts, experts) and torch.equal(r.offs.long().cpu(), counts.cumsum(0).cpu())):
        problem = problem or "route_topk: other experts or groups than top_k_routing"
    problem = problem or mismatch("route_topk weights", r.weights, weights, 1e-5)
    x = torch.randn(T, D, generator=g).to(dev, dtype)
    w1, w3, w2 = ((0.2 * torch.randn(E, *s, generator=g)).to(dev, dtype) for s in ((F, D), (F, D), (D, F)))
    hs = expert_gemv_swiglu(x, w1, w3, r.offs, r.token_of)
    order = torch.argsort(experts.reshape(-1), stable=True)
    xs = x.index_select(0, order // kk)
    ex_sorted = experts.reshape(-1)[order]
    want_h = torch.stack([
        torch.nn.functional.silu(w1[e] @ xs[i]) * (w3[e] @ xs[i]) for i, e in enumerate(ex_sorted.tolist())
    ])  # fmt: skip
    problem = problem or mismatch("expert_gemv_swiglu", hs, want_h, tol)
    ys = expert_gemv(hs, w2, r.offs)
    hres = torch.randn(T, D, generator=g).to(dev, dtype)
    wn = (1 + 0.1 * torch.randn(D, generator=g)).to(dev, dtype)
    h_new, xn = combine_add_rmsnorm(hres, ys, r, wn, 1e-5)
    moe = torch.zeros_like(x).index_add_(0, order // kk, ys * r.weights.reshape(-1)[order][:, None].to(dtype))
    problem = problem or mismatch("combine", h_new, hres + moe, tol)
    return problem or mismatch("combine norm", xn, _ref_norm(hres + moe, wn, 1e-5), tol)
