"""Attention over a packed token stream in torch SDPA: the reference every other attention kernel matches.

On CUDA the GPU executor swaps in xformers kernels (`mixchat/exec/xformers_attn.py`), which read the same
BatchLayout; a GPU script (`scripts/check_xformers.py`) checks that the two agree.

On the CPU, a pre-fill chunk of a sliding-window model is attended in query blocks: each block of
`BAND_BLOCK` queries sees only the `BAND_BLOCK + W - 1` keys that can fall inside its queries' windows,
instead of every key of the chunk and the cache under a mask that hides most of them. All blocks of a
sequence have the same shape, so they go through one SDPA call with one band mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixchat.model.layout import BatchLayout, live_mask

BAND_BLOCK = 32  # queries per block of the banded path (32-64 measured best on AVX-512 for W = 256)
BAND_MIN_SAVING = 0.75  # take the banded path when it computes at most this fraction of the dense scores


def attend(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # packed: [S, Hkv, D]; decode: [B, C, Hkv, D]
    v: torch.Tensor,
    layout: BatchLayout,
) -> torch.Tensor:  # [T, H, D]
    if layout.mode == "decode":
        return _decode_sdpa(q, k, v, layout)
    return _packed_sdpa(q, k, v, layout)


def _packed_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    seqlens, kv_lens = layout.seqlens, layout.kv_lens
    T, H, D = q.shape
    Hkv = k.shape[1]
    if len(set(seqlens)) == 1 and len(set(kv_lens)) == 1:
        # Equal-length sequences (training, same-length prompts): one batched call.
        B, tq, tk = len(seqlens), seqlens[0], kv_lens[0]
        out = _batched_sdpa(q.view(B, tq, H, D), k.view(B, tk, Hkv, D), v.view(B, tk, Hkv, D), layout)
        return out.reshape(T, H, D)
    outs = []
    qs = ks = 0
    for tq, tk in zip(seqlens, kv_lens, strict=True):
        outs.append(_batched_sdpa(q[None, qs : qs + tq], k[None, ks : ks + tk], v[None, ks : ks + tk], layout)[0])
        qs += tq
        ks += tk
    return torch.cat(outs, 0)


def _batched_sdpa(
    q: torch.Tensor,  # [B, tq, H, D], queries aligned to the end of the keys
    k: torch.Tensor,  # [B, tk, Hkv, D]
    v: torch.Tensor,
    layout: BatchLayout,
) -> torch.Tensor:  # [B, tq, H, D]
    """Sequences of one length: query blocks over their windows where that pays, else one SDPA call, with
    the causal kernel instead of a mask where the mask is plainly causal (a first chunk, no window)."""
    tq, tk = q.shape[1], k.shape[1]
    if _banded_pays(q, tq, tk, layout.window):
        return _banded_sdpa(q, k, v, layout)
    qb, kb, vb = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, t, D]
    mask = layout.local_mask(tq, tk)
    gqa = k.shape[2] != q.shape[2]
    if mask is not None and tq == tk and layout.window is None:
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=gqa)
    return out.transpose(1, 2)


def _banded_pays(q: torch.Tensor, tq: int, tk: int, window: int | None) -> bool:
    """Whether query blocks over their window's keys beat one masked pass over all `tk` keys."""
    if window is None:
        return False
    n_blocks = -(-tq // BAND_BLOCK)
    banded = n_blocks * BAND_BLOCK * (BAND_BLOCK + window - 1)
    return banded <= BAND_MIN_SAVING * tq * tk


def _banded_sdpa(
    q: torch.Tensor,  # [B, tq, H, D], queries aligned to the end of the keys
    k: torch.Tensor,  # [B, tk, Hkv, D]
    v: torch.Tensor,
    layout: BatchLayout,
) -> torch.Tensor:  # [B, tq, H, D]
    """Sliding-window attention in query blocks, each over its own `block + W - 1` candidate keys.

    The key stream is padded so that block b's keys are rows b*block .. b*block + span - 1 of it: padding
    in front stands for keys before the start of the sequence (masked), padding at the end for the
    queries that round the last block up (their outputs are dropped).
    """
    W = layout.window
    assert W is not None
    B, tq, H, D = q.shape
    tk, Hkv = k.shape[1], k.shape[2]
    if tk == tq and tq > W:
        # The sequence starts in this pass: its first W queries see every earlier key, a plain causal
        # block (whose kernel skips the masked half), and the rest need no front padding.
        qh, kh, vh = (t[:, :W].transpose(1, 2) for t in (q, k, v))
        head = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=Hkv != H)  # [B, H, W, D]
        return torch.cat([head.transpose(1, 2), _banded_sdpa(q[:, W:], k, v, layout)], 1)
    blk = BAND_BLOCK
    nb = -(-tq // blk)
    span = blk + W - 1
    tail = nb * blk - tq
    pad_front = W - 1 - (tk - tq)  # < 0: the first block's window starts inside the keys

    def stream(x: torch.Tensor) -> torch.Tensor:  # [B, tk, Hkv, D] -> [B * nb, Hkv, span, D]
        parts = [x] if pad_front >= 0 else [x[:, -pad_front:]]
        if pad_front > 0:
            parts.insert(0, x.new_zeros(B, pad_front, Hkv, D))
        if tail:
            parts.append(x.new_zeros(B, tail, Hkv, D))
        xs = torch.cat(parts, 1) if len(parts) > 1 else parts[0]  # [B, W - 1 + nb*blk, Hkv, D]
        blocks = xs.unfold(1, span, blk)  # [B, nb, Hkv, D, span] (overlapping view)
        return blocks.permute(0, 1, 2, 4, 3).reshape(B * nb, Hkv, span, D)

    qp = torch.cat([q, q.new_zeros(B, tail, H, D)], 1) if tail else q
    qb = qp.view(B, nb, blk, H, D).permute(0, 1, 3, 2, 4).reshape(B * nb, H, blk, D)
    mask = layout.band_mask(blk, nb, max(pad_front, 0))  # [nb or 1, 1, blk, span]
    if mask.shape[0] > 1 and B > 1:
        mask = mask.repeat(B, 1, 1, 1)
    out = F.scaled_dot_product_attention(qb, stream(k), stream(v), attn_mask=mask, enable_gqa=Hkv != H)
    out = out.view(B, nb, H, blk, D).permute(0, 1, 3, 2, 4).reshape(B, nb * blk, H, D)
    return out[:, :tq]


def _decode_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """One query per sequence over its whole buffer; slots past a sequence's live count are masked. With one
    sequence the live slots are a prefix of the buffer, so a slice replaces the mask."""
    B, C = k.shape[:2]
    mask = None
    if B == 1 and layout.device_live is None:
        n = layout.kv_lens[0]
        if n < C:
            k, v = k[:, :n], v[:, :n]
    elif layout.kv_padding == C:
        mask = layout.decode_mask()
    elif min(layout.kv_lens) < C:
        mask = live_mask(torch.tensor(layout.kv_lens, device=q.device), C)
    return _query_groups(q, k, v, mask)


def _query_groups(
    q: torch.Tensor,  # [B, H, D]: one query per sequence
    k: torch.Tensor,  # [B, n, Hkv, D]
    v: torch.Tensor,
    mask: torch.Tensor | None = None,  # [B, 1, 1, n]
) -> torch.Tensor:  # [B, H, D]
    """SDPA with the g query heads that share a KV head passed as g queries of that head ([B, Hkv, g, D]):
    the same arithmetic as GQA, without SDPA repeating K/V, which for one query costs more than the maths."""
    B, H, D = q.shape
    Hkv = k.shape[2]
    qb = q.reshape(B, Hkv, H // Hkv, D)
    out = F.scaled_dot_product_attention(qb, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)  # [B, Hkv, g, D]
    return out.reshape(B, H, D)  # a view where SDPA returned it contiguous (CUDA kernels may not)


def attend_last(
    q: torch.Tensor,  # [B, H, D]: the last query of each sequence
    k: torch.Tensor,  # [S, Hkv, D]: the packed key stream of the pass (cached keys, then the chunk's)
    v: torch.Tensor,
    layout: BatchLayout,
) -> torch.Tensor:  # [B, H, D]
    """Each sequence's last query over its visible keys (SDPA; used by the CPU runner's trimmed last layer).

    A last query sees the last `min(W, kv_len)` keys of its sequence, all of them, so a slice replaces the
    mask; its query heads are grouped by KV head, as in decode.
    """
    outs = []
    ks = 0
    for b, tk in enumerate(layout.kv_lens):
        n = tk if layout.window is None else min(tk, layout.window)
        outs.append(_query_groups(q[b : b + 1], k[None, ks + tk - n : ks + tk], v[None, ks + tk - n : ks + tk]))
        ks += tk
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)
