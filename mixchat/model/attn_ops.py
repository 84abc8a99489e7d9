"""Attention over a packed token stream: xformers kernels on CUDA, torch SDPA everywhere else.

Both paths read the same BatchLayout; a GPU script (`scripts/check_xformers.py`) checks that they agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixchat.model.layout import BatchLayout
from mixchat.model.xformers_compat import kernels_work, memory_efficient_attention_fn

_FORCE_SDPA = False


def force_sdpa(value: bool) -> None:
    """Route attention through SDPA even where xformers kernels work (for comparisons)."""
    global _FORCE_SDPA
    _FORCE_SDPA = value


def _use_xformers(x: torch.Tensor) -> bool:
    return not _FORCE_SDPA and x.is_cuda and kernels_work(str(x.device))


def attend(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # packed: [S, Hkv, D]; decode: [B, C, Hkv, D]
    v: torch.Tensor,
    layout: BatchLayout,
) -> torch.Tensor:  # [T, H, D]
    if _use_xformers(q):
        return _attend_xformers(q, k, v, layout)
    if layout.mode == "decode":
        return _decode_sdpa(q, k, v, layout)
    return _packed_sdpa(q, k, v, layout)


def _attend_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    T, H, D = q.shape
    Hkv = k.shape[-2]
    g = H // Hkv
    k = k.reshape(-1, Hkv, D)
    v = v.reshape(-1, Hkv, D)
    S = k.shape[0]
    # 5-D BMGHK form shares each KV head with its g query heads without copying.
    q5 = q.view(1, T, Hkv, g, D)
    k5 = k.view(1, S, Hkv, 1, D).expand(1, S, Hkv, g, D)
    v5 = v.view(1, S, Hkv, 1, D).expand(1, S, Hkv, g, D)
    out = memory_efficient_attention_fn()(q5, k5, v5, attn_bias=layout.bias)
    return out.view(T, H, D)


def _packed_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    seqlens, kv_lens = layout.seqlens, layout.kv_lens
    T, H, D = q.shape
    Hkv = k.shape[1]
    if len(set(seqlens)) == 1 and len(set(kv_lens)) == 1:
        # Equal-length sequences (training, same-length prompts): one batched call.
        B, tq, tk = len(seqlens), seqlens[0], kv_lens[0]
        qb = q.view(B, tq, H, D).transpose(1, 2)
        kb = k.view(B, tk, Hkv, D).transpose(1, 2)
        vb = v.view(B, tk, Hkv, D).transpose(1, 2)
        out = _sdpa(qb, kb, vb, layout.local_mask(tq, tk), causal_ok=tq == tk and layout.window is None)
        return out.transpose(1, 2).reshape(T, H, D)
    outs = []
    qs = ks = 0
    for tq, tk in zip(seqlens, kv_lens, strict=True):
        qi = q[qs : qs + tq].transpose(0, 1)[None]
        ki = k[ks : ks + tk].transpose(0, 1)[None]
        vi = v[ks : ks + tk].transpose(0, 1)[None]
        o = _sdpa(qi, ki, vi, layout.local_mask(tq, tk), causal_ok=tq == tk and layout.window is None)
        outs.append(o[0].transpose(0, 1))
        qs += tq
        ks += tk
    return torch.cat(outs, 0)


def _decode_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    # One query per sequence over its whole buffer; slots past a sequence's live count are masked.
    B, C, Hkv, D = k.shape
    H = q.shape[1]
    qb = q.view(B, 1, H, D).transpose(1, 2)  # [B, H, 1, D]
    kb = k.transpose(1, 2)  # [B, Hkv, C, D]
    vb = v.transpose(1, 2)
    mask = None
    if min(layout.kv_lens) < C:
        lens = torch.tensor(layout.kv_lens, device=q.device)
        mask = (torch.arange(C, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=Hkv != H)
    return out.transpose(1, 2).reshape(B, H, D)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal_ok: bool
) -> torch.Tensor:
    gqa = k.shape[1] != q.shape[1]
    if mask is not None and causal_ok:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
