"""A quantized model's weights under the stored names of docs/QUANTIZATION.md (Mistral-native layout).

Full-precision tensors keep their native names (`tok_embeddings.weight`, `layers.0.attention_norm.weight`,
`layers.0.feed_forward.gate.weight`, `output.weight`, ...). A quantized matrix `P.weight` is stored as
`P.qweight`, `P.scales` and (int4) `P.zeros`; expert matrices one expert at a time, as in Mistral's own
files: `layers.{i}.feed_forward.experts.{e}.w1.qweight`.
"""

from __future__ import annotations

import torch
from torch import nn

from mixchat.quant.modules import QuantLinear, QuantMoe


def stored_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a quantized (unswapped) model under its stored name, contiguous, on the CPU."""
    out: dict[str, torch.Tensor] = {}
    owned: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            for part, t in m.stored().items():
                out[f"{name}.{part}"] = t
                owned.add(id(t))
        elif isinstance(m, QuantMoe):
            for w in ("w1", "w2", "w3"):
                for part, t in m.stored(w).items():
                    owned.add(id(t))
                    for e in range(t.shape[0]):
                        out[f"{name}.experts.{e}.{w}.{part}"] = t[e]
    for name, p in model.named_parameters():
        out[name] = p
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}
