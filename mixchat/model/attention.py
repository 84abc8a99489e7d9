"""Grouped-query attention with rotary embeddings; K/V storage is delegated to an outside cache."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from mixchat.model.args import ModelArgs
from mixchat.model.attn_ops import attend
from mixchat.model.layout import BatchLayout
from mixchat.model.rope import apply_rotary


class KVStore(Protocol):
    """What attention needs from a cache: keys/values to attend over, after storing this pass's."""

    def kv_for(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # [T, dim]
        rot: torch.Tensor,  # [T, 1, hd/2] complex rotation (see rope.py)
        layout: BatchLayout,
        cache: KVStore | None,
    ) -> torch.Tensor:
        T = x.shape[0]
        q = self.wq(x).view(T, self.n_heads, self.head_dim)
        k = self.wk(x).view(T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(T, self.n_kv_heads, self.head_dim)
        q = apply_rotary(q, rot)
        k = apply_rotary(k, rot)
        layout = layout.for_layer(self.layer_id)  # its own window and slots (models with per-layer windows)
        keys, values = (k, v) if cache is None else cache.kv_for(self.layer_id, k, v, layout)
        out = self.attend(q, keys, values, layout)  # [T, H, hd]
        return self.wo(out.reshape(T, self.n_heads * self.head_dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        """The attention kernel: torch SDPA here; an executor may swap in another (xformers on CUDA)."""
        return attend(q, k, v, layout)
