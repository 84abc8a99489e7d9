"""How one forward pass's packed token stream (T tokens of B sequences laid end to end) maps onto sequences,
positions and cache slots: worked out once per pass, by the cache or by `fresh_layout`, and shared by all
layers, as are the masks built from it.

The xformers `attn_bias` describes the attention pattern; the plain lists (`seqlens`, `kv_lens`, `window`)
say the same for the SDPA path, which cannot read xformers' private fields. The bias is built on first use
only: the CPU never runs xformers, and on a small model building it every decode step costs more than the
attention itself.

A model whose layers have different sliding windows (Ministral) has one layout per distinct window (its own
visible keys and slots) in `per_layer`; every path that runs a layer asks `layout.for_layer(layer)`.
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
    window: int | None
    device: torch.device
    pos_list: list[int]  # [T] absolute positions, for RoPE (`positions` is the same as a tensor)
    # Cache traffic; None when no cache takes part.
    rows: torch.Tensor | None = None  # [B] cache rows, one per sequence (decode: only if not all_rows)
    row_ids: list[int] | None = None  # the same rows, on the host
    write_src: torch.Tensor | None = None  # [N] token indices whose K/V are kept (prefill)
    slot_list: list[int] | None = None  # [N] flat slot indices (row * C + slot) of the kept tokens
    gather_src: torch.Tensor | None = None  # [M] flat slots of cached tokens, in time order per sequence
    gather_dst: torch.Tensor | None = None  # [M] where they sit in the packed key stream
    new_dst: torch.Tensor | None = None  # [T] where this pass's keys sit in the packed key stream
    all_rows: bool = False  # decode: the pass covers every cache row in order (no gather needed)
    kv_padding: int | None = None  # decode: slots per cache row (keys are padded to this length)
    # Decode inside a captured graph: [B] live key counts on the device, rewritten before each replay. The
    # mask is then built from them and the cache writes at `write_dst` (a device tensor given with them): the
    # host integers (`kv_lens`, `slot_list`, `pos_list`, fixed at capture) are not read for either.
    device_live: torch.Tensor | None = None
    # Per-layer windows: the layout of each (global) layer, None when every layer uses this one.
    per_layer: list[BatchLayout] | None = field(default=None, repr=False)
    _bias: Any = field(default=None, repr=False)
    _positions: torch.Tensor | None = field(default=None, repr=False)
    _write_dst: torch.Tensor | None = field(default=None, repr=False)
    _masks: dict[tuple, torch.Tensor | None] = field(default_factory=dict, repr=False)

    def for_layer(self, layer: int) -> BatchLayout:
        """The layout layer `layer` (global index) attends with."""
        return self if self.per_layer is None else self.per_layer[layer]

    @property
    def n_tokens(self) -> int:
        return len(self.pos_list)

    @property
    def positions(self) -> torch.Tensor:
        """[T] absolute positions as a tensor (built on first use: decode on the CPU reads `pos_list`)."""
        if self._positions is None:
            self._positions = torch.tensor(self.pos_list, dtype=torch.long, device=self.device)
        return self._positions

    @property
    def write_dst(self) -> torch.Tensor | None:
        """[N] `slot_list` as a tensor, for index_copy_ into the flat cache (built on first use)."""
        if self._write_dst is None and self.slot_list is not None:
            self._write_dst = torch.tensor(self.slot_list, dtype=torch.long, device=self.device)
        return self._write_dst

    @property
    def kv_total(self) -> int:
        return sum(self.kv_lens)

    @property
    def bias(self) -> Any:
        """The xformers AttnBias describing this pass's pattern (built on first use, then kept)."""
        if self._bias is None:
            self._bias = _xformers_bias(self)
        return self._bias

    def last_token_index(self) -> torch.Tensor:
        """[B] index of each sequence's last token in the packed stream."""
        key = ("last",)
        if key not in self._masks:
            self._masks[key] = torch.tensor(self.seqlens, device=self.device).cumsum(0) - 1
        out = self._masks[key]
        assert out is not None
        return out

    def local_mask(self, q_len: int, kv_len: int) -> torch.Tensor | None:
        """Boolean [q_len, kv_len] mask, queries aligned to the end of the keys; None if all visible."""
        key = (q_len, kv_len)
        if key in self._masks:
            return self._masks[key]
        mask: torch.Tensor | None = None
        if not (q_len == 1 and (self.window is None or kv_len <= self.window)):
            qpos = torch.arange(q_len, device=self.device)[:, None] + (kv_len - q_len)
            kpos = torch.arange(kv_len, device=self.device)[None, :]
            mask = kpos <= qpos
            if self.window is not None:
                mask &= qpos - kpos < self.window
        self._masks[key] = mask
        return mask

    def band_mask(self, block: int, n_blocks: int, pad_front: int) -> torch.Tensor:
        """Boolean [n_blocks or 1, 1, block, block + W - 1] mask for query blocks of a sliding window.

        Block b holds queries b*block .. b*block+block-1 of one sequence and sees the window's keys before
        its first query and its own keys: `block + W - 1` keys, of which query j may see keys j .. j+W-1.
        The key stream is padded in front by `pad_front` rows that no query may see.
        """
        assert self.window is not None
        key = ("band", block, n_blocks, pad_front)
        if key not in self._masks:
            dev = self.device
            span = block + self.window - 1
            j = torch.arange(block, device=dev)[:, None]
            lk = torch.arange(span, device=dev)[None, :]
            mask = (lk >= j) & (lk <= j + self.window - 1)  # [block, span]
            if pad_front > 0:
                first_row = torch.arange(n_blocks, device=dev)[:, None] * block + lk  # [n, span]
                mask = mask[None] & (first_row >= pad_front)[:, None, :]  # [n, block, span]
                self._masks[key] = mask[:, None]
            else:
                self._masks[key] = mask[None, None]
        out = self._masks[key]
        assert out is not None
        return out

    def decode_mask(self) -> torch.Tensor | None:
        """Decode over padded rows: boolean [B, 1, 1, S] (True = live slot), or None when every slot is live."""
        key = ("decode",)
        if key not in self._masks:
            S = self.kv_padding
            assert S is not None
            mask = None
            if self.device_live is not None:
                mask = live_mask(self.device_live, S)
            elif min(self.kv_lens) < S:
                mask = live_mask(torch.tensor(self.kv_lens, device=self.device), S)
            self._masks[key] = mask
        return self._masks[key]


def live_mask(live: torch.Tensor, slots: int) -> torch.Tensor:
    """[B, 1, 1, slots] bool: which of each row's buffer slots hold live keys (`live`: [B] counts).

    Live tokens fill a row's slots from 0 until the buffer has wrapped, then all of them, so a count says
    which slots hold keys; attention over a rolling buffer needs no time order (keys carry their RoPE)."""
    return (torch.arange(slots, device=live.device)[None, :] < live[:, None])[:, None, None, :]


def _xformers_bias(layout: BatchLayout) -> Any:
    """The xformers vocabulary for the layout (semantics 4): which bias class describes which pass."""
    ab = attn_bias()
    seqlens, kv_lens, window = layout.seqlens, layout.kv_lens, layout.window
    dev = layout.device  # a pipeline stage on cuda:1 needs its bias there, not on the default device
    if layout.mode == "decode":
        return ab.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
            q_seqlen=seqlens, kv_padding=layout.kv_padding, kv_seqlen=kv_lens, device=dev
        )
    if kv_lens == seqlens:  # nothing cached before this pass: a first chunk
        bias = ab.BlockDiagonalCausalMask.from_seqlens(list(seqlens), device=dev)
        return bias.make_local_attention(window) if window is not None else bias
    if window is not None:
        bias = ab.BlockDiagonalMask.from_seqlens(q_seqlen=seqlens, kv_seqlen=kv_lens, device=dev)
        return bias.make_local_attention_from_bottomright(window)
    return ab.BlockDiagonalCausalFromBottomRightMask.from_seqlens(q_seqlen=seqlens, kv_seqlen=kv_lens, device=dev)


def fresh_layout(seqlens: list[int], window: int | list[int | None] | None, device: torch.device | str) -> BatchLayout:
    """Layout for sequences that start from nothing and use no cache (reference runs, training). `window`:
    the model's window, or one per layer (`ModelArgs.layer_windows`)."""
    dev = torch.device(device)
    if isinstance(window, list):
        by_window = {w: fresh_layout(seqlens, w, dev) for w in dict.fromkeys(window)}
        per_layer = [by_window[w] for w in window]
        for lay in by_window.values():
            lay.per_layer = per_layer
        return per_layer[0]
    pos = [p for n in seqlens for p in range(n)]
    return BatchLayout(
        mode="fresh", seqlens=list(seqlens), kv_lens=list(seqlens), window=window, device=dev, pos_list=pos
    )
