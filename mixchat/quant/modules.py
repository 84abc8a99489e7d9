"""Quantized modules swapped into a model at load, the way gpt-fast swaps in its WeightOnlyInt8Linear.

The model (`mixchat/model/`) stays the reference and knows nothing of quantization. `quantize_modules`
replaces, on a model built on the meta device, every `nn.Linear` except the router gate with a
`QuantLinear`, and changes the class of every `MoeLayer` to `QuantMoe` (its stacked expert weights become
stacked codes and scales). Both hold the stored format of `format.py` as buffers and compute the plain
reference: dequantize to float32, cast to the activations' dtype, matmul. The executors' fast paths
(`mixchat/exec/quant_cpu.py`, `quant_triton.py`) are further swaps of these classes, made once the weights
are in place, and fall back to this reference wherever their kernel cannot serve a call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixchat.model.args import ModelArgs
from mixchat.model.layers import MoeLayer
from mixchat.quant.format import PARTS, QuantSpec, dequantize, stored_shapes


class QuantLinear(nn.Module):
    """y = x W^T with W held as int8 or int4 codes (no bias: the model has none)."""

    qweight: torch.Tensor  # buffers (declared for the type checker; registered in __init__)
    scales: torch.Tensor
    zeros: torch.Tensor  # int4 only

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, name: str = "a matrix") -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.format = spec.format
        for part, (shape, dtype) in stored_shapes(spec, out_features, in_features, name).items():
            self.register_buffer(part, torch.empty(shape, dtype=dtype))

    def stored(self) -> dict[str, torch.Tensor]:
        """The stored tensors by part name ("qweight", "scales"[, "zeros"])."""
        return {p: getattr(self, p) for p in PARTS if hasattr(self, p)}

    def dequantized(self) -> torch.Tensor:
        """The float32 weight [out, in] these codes stand for."""
        return dequantize(self.stored())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


class QuantMoe(MoeLayer):
    """A `MoeLayer` whose experts' w1/w2/w3 are stacked codes: buffers `w1_qweight` [E, out, in(/2)],
    `w1_scales`, (int4) `w1_zeros`, and the same for w2 and w3. Routing (the gate) stays full precision."""

    format: str
    w1_qweight: torch.Tensor  # one of the buffers (declared for the type checker)

    def stored(self, which: str) -> dict[str, torch.Tensor]:
        """One stacked matrix's stored tensors ("w1", "w2" or "w3"), each with a leading expert dim."""
        return {p: getattr(self, f"{which}_{p}") for p in PARTS if hasattr(self, f"{which}_{p}")}

    def expert_weight(self, which: str, e: int) -> torch.Tensor:
        """Expert e's float32 weight of one matrix."""
        return dequantize({p: t[e] for p, t in self.stored(which).items()})

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        w1, w2, w3 = (self.expert_weight(w, e).to(x.dtype) for w in ("w1", "w2", "w3"))
        return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def _make_quant_moe(layer: MoeLayer, spec: QuantSpec, name: str) -> None:
    """Turn a (meta) MoeLayer into a QuantMoe in place: its expert parameters become code buffers."""
    shapes = {w: tuple(getattr(layer, w).shape) for w in ("w1", "w2", "w3")}
    device = layer.w1.device
    for w, (E, out, inp) in shapes.items():
        delattr(layer, w)
        for part, (shape, dtype) in stored_shapes(spec, out, inp, f"{name}.{w}").items():
            layer.register_buffer(f"{w}_{part}", torch.empty((E, *shape), dtype=dtype, device=device))
    layer.__class__ = QuantMoe
    layer.__dict__["format"] = spec.format


def quantize_modules(model: nn.Module, spec: QuantSpec) -> None:
    """Swap the quantized modules into `model` (whole or one pipeline stage), in place.

    Meant for a model on the meta device, before its storage is allocated: the full-precision matrices are
    never allocated at all. The buffers' dtypes are the stored ones, so call this after any `.to(dtype)`.
    """
    if not spec.quantized:
        return
    for name, module in list(model.named_modules()):
        if isinstance(module, MoeLayer) and not isinstance(module, QuantMoe):
            _make_quant_moe(module, spec, name)
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and not (isinstance(module, MoeLayer) and child_name == "gate"):
                full = f"{name}.{child_name}" if name else child_name
                q = QuantLinear(child.in_features, child.out_features, spec, full).to(child.weight.device)
                setattr(module, child_name, q)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (QuantLinear, QuantMoe)) for m in model.modules())


def weight_bytes(model: object) -> int | None:
    """Bytes of a model's parameters and buffers (its weights in memory, codes and scales included); None
    for a wrapper that is no module (rank 0's pipeline model reports its own stage elsewhere)."""
    if not isinstance(model, nn.Module):
        return None
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def meta_weight_bytes(args: ModelArgs, spec: QuantSpec, elem: int) -> int:
    """Bytes a model of `args` holds in weights under `spec`, full-precision tensors `elem` bytes each
    (computed on the meta device: nothing is allocated)."""
    from mixchat.model.transformer import Transformer

    dtype = {4: torch.float32, 2: torch.bfloat16}.get(elem, torch.bfloat16)
    with torch.device("meta"):
        model = Transformer(args).to(dtype)
        quantize_modules(model, spec)
    return weight_bytes(model) or 0
