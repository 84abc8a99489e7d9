"""xformers' memory-efficient attention over a packed stream, for CUDA models (see gpu_modules.py).

It reads the same BatchLayout as the SDPA reference (`mixchat/model/attn_ops.py`): the layout's xformers
bias describes the block-diagonal, sliding-window mask of the pass.
"""

from __future__ import annotations

import torch

from mixchat.model.layout import BatchLayout
from mixchat.model.xformers_compat import memory_efficient_attention_fn


def attend_xformers(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # packed: [S, Hkv, D]; decode: [B, C, Hkv, D]
    v: torch.Tensor,
    layout: BatchLayout,
) -> torch.Tensor:  # [T, H, D]
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
