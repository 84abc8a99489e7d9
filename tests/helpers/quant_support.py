"""Test helpers for quantized weights: independent dequantization and a float32 twin of a quantized model.

`dequantize_independent` re-derives the stored format's meaning from docs/QUANTIZATION.md with plain Python
loops over small tensors (no library code), so the library's `dequantize` is checked against it, and every
kernel is then checked against float32 matmuls on dequantized weights.
"""

from __future__ import annotations

import torch
from torch import nn

from mixchat.model.layers import MoeLayer
from mixchat.model.transformer import Transformer
from mixchat.quant.format import dequantize
from mixchat.quant.modules import QuantLinear, QuantMoe


def dequantize_independent(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The documented formula, element by element (small tensors only)."""
    q, s = parts["qweight"], parts["scales"].float()
    if q.dtype == torch.int8:
        out, n_in = q.shape
        return torch.tensor([[float(q[r, k]) * float(s[r]) for k in range(n_in)] for r in range(out)])
    z = parts["zeros"].float()
    out, half = q.shape
    n_in = 2 * half
    G = n_in // s.shape[1]
    rows = []
    for r in range(out):
        row = []
        for k in range(n_in):
            byte = int(q[r, k // 2])
            code = byte & 0xF if k % 2 == 0 else byte >> 4
            row.append(code * float(s[r, k // G]) + float(z[r, k // G]))
        rows.append(row)
    return torch.tensor(rows)


@torch.no_grad()
def dequantized_twin(model: Transformer) -> Transformer:
    """A plain float32 Transformer whose weights are the dequantized weights of a quantized `model`."""
    twin = Transformer(model.args).float().eval().requires_grad_(False)
    params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        params[name].copy_(p.float())
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            params[f"{name}.weight"].copy_(dequantize(m.stored()))
        elif isinstance(m, QuantMoe):
            for w in ("w1", "w2", "w3"):
                stacked = m.stored(w)
                for e in range(params[f"{name}.{w}"].shape[0]):
                    params[f"{name}.{w}"][e].copy_(dequantize({p: t[e] for p, t in stacked.items()}))
    return twin


def full_precision_matrices(model: nn.Module) -> list[str]:
    """Names of floating parameters that should have been quantized (an empty list for a quantized model)."""
    out = []
    for name, m in model.named_modules():
        if type(m) is nn.Linear and not name.endswith(".gate"):
            out.append(name)
        if type(m) is MoeLayer:
            out.append(name)
    return out
