"""How one forward pass's packed token stream maps onto sequences, positions and cache slots.

A pass carries T tokens from B sequences laid end to end. Every layer needs the same facts about that
layout (where each sequence starts, which keys each query may see, where K/V go in the cache), so they are
worked out once per pass, by the cache or by `fresh_layout`, and shared by all layers.

The xformers `attn_bias` object is the canonical description of the attention pattern; the plain lists
beside it (`seqlens`, `kv_lens`, `window`) say the same thing for the torch SDPA path, which cannot read
xformers' private fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mixchat.model.xformers_compat import attn_bias

Mode = Literal["fresh", "prefill", "decode"]


@dataclass
class BatchLayout:
    mode: Mode
    seqlens: list[int]  # query tokens per sequence; sum = T
    kv_lens: list[int]  # keys visible per sequence (cached live tokens + this pass's tokens)
    positions: torch.Tensor  # [T] absolute positions, for RoPE
    window: int | None
    bias: Any  # xformers AttnBias describing the same pattern
    # Cache traffic; None when no cache takes part.
    rows: torch.Tensor | None = None  # [B] cache rows, one per sequence
    write_src: torch.Tensor | None = None  # [N] token indices whose K/V are kept
    write_dst: torch.Tensor | None = None  # [N] flat slot indices (row * C + slot)
    gather_src: torch.Tensor | None = None  # [M] flat slots of cached tokens, in time order per sequence
    gather_dst: torch.Tensor | None = None  # [M] where they sit in the packed key stream
    new_dst: torch.Tensor | None = None  # [T] where this pass's keys sit in the packed key stream
    all_rows: bool = False  # decode: the pass covers every cache row in order (no gather needed)
    _masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def n_tokens(self) -> int:
        return int(self.positions.shape[0])

    @property
    def kv_total(self) -> int:
        return sum(self.kv_lens)

    def last_token_index(self) -> torch.Tensor:
        """[B] index of each sequence's last token in the packed stream."""
        ends = torch.tensor(self.seqlens, device=self.positions.device).cumsum(0) - 1
        return ends

    def local_mask(self, q_len: int, kv_len: int) -> torch.Tensor | None:
        """Boolean [q_len, kv_len] mask, queries aligned to the end of the keys; None if all visible.

        Built once per distinct shape and reused by every layer of the pass.
        """
        key = (q_len, kv_len)
        if key in self._masks:
            return self._masks[key]
        offset = kv_len - q_len
        full_causal_free = q_len == 1 and (self.window is None or kv_len <= self.window)
        mask: torch.Tensor | None = None
        if not full_causal_free:
            dev = self.positions.device
            qpos = torch.arange(q_len, device=dev)[:, None] + offset
            kpos = torch.arange(kv_len, device=dev)[None, :]
            allowed = kpos <= qpos
            if self.window is not None:
                allowed &= qpos - kpos < self.window
            mask = allowed
        self._masks[key] = mask  # type: ignore[assignment]
        return mask


def fresh_layout(seqlens: list[int], window: int | None, device: torch.device | str) -> BatchLayout:
    """Layout for sequences that start from nothing and use no cache (reference runs, training)."""
    ab = attn_bias()
    bias = ab.BlockDiagonalCausalMask.from_seqlens(list(seqlens))
    if window is not None:
        bias = bias.make_local_attention(window)
    positions = torch.cat([torch.arange(n) for n in seqlens]).to(device)
    return BatchLayout(
        mode="fresh", seqlens=list(seqlens), kv_lens=list(seqlens), positions=positions, window=window, bias=bias
    )
