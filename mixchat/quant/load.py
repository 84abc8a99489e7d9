"""Filling a quantized model from a checkpoint, one tensor at a time.

The loader (`mixchat.loader`) maps every checkpoint tensor to the parameter of the reference model it
belongs to. For a parameter that `quantize_modules` replaced, it hands the tensor here instead:

- a full-precision tensor (a bf16/float32 checkpoint loaded with `--quant`) is quantized on the spot, in
  float32, and only its codes are kept: the model's memory at any moment is the quantized model plus the
  one tensor being read;
- a stored part (`<name>.qweight`, `.scales`, `.zeros` of a quantized checkpoint) is checked against the
  expected shape and dtype and copied in.

`missing()` names what was never filled, so a checkpoint without one scale tensor is one clear line.
"""

from __future__ import annotations

import torch
from torch import nn

from mixchat.errors import LoadError
from mixchat.quant.format import PARTS, ROW_BLOCK, QuantSpec, quantize
from mixchat.quant.modules import QuantLinear, QuantMoe

PART_SUFFIXES = tuple(f".{p}" for p in PARTS)


def split_part(name: str) -> tuple[str, str | None]:
    """'layers.0.attention.wq.scales' -> ('layers.0.attention.wq.weight', 'scales'); others unchanged."""
    for p in PARTS:
        if name.endswith("." + p):
            return name[: -len(p) - 1] + ".weight", p
    return name, None


class QuantFiller:
    """Where each quantized matrix of `model` goes: reference parameter name -> its module."""

    def __init__(self, model: nn.Module, spec: QuantSpec, n_experts: int) -> None:
        self.spec = spec
        self.n_experts = n_experts
        self.linears: dict[str, QuantLinear] = {}
        self.moes: dict[str, tuple[QuantMoe, str]] = {}
        for name, m in model.named_modules():
            if isinstance(m, QuantLinear):
                self.linears[f"{name}.weight"] = m
            elif isinstance(m, QuantMoe):
                for w in ("w1", "w2", "w3"):
                    self.moes[f"{name}.{w}"] = (m, w)
        self.filled: set[tuple[str, int | None, str]] = set()

    def claims(self, pname: str) -> bool:
        return pname in self.linears or pname in self.moes

    def _dest(self, pname: str, expert: int | None, part: str, source: str) -> torch.Tensor:
        if pname in self.linears:
            if expert is not None:
                raise LoadError(f"tensor {source!r} names an expert of a dense matrix")
            buf = getattr(self.linears[pname], part, None)
        else:
            if expert is None:
                raise LoadError(f"tensor {source!r}: expert weights must be stored one expert at a time")
            moe, w = self.moes[pname]
            stacked = getattr(moe, f"{w}_{part}", None)
            buf = None if stacked is None else stacked[expert]
        if buf is None:
            raise LoadError(f"tensor {source!r} has no place in {self.spec.format} weights")
        return buf

    def fill(self, pname: str, expert: int | None, tensor: torch.Tensor, source: str) -> None:
        """Quantize one full-precision matrix ([out, in]) into place."""
        shape = self._dest(pname, expert, "qweight", source).shape
        want_in = shape[-1] * (2 if self.spec.format == "int4" else 1)
        if tensor.dim() != 2 or tensor.shape[0] != shape[0] or tensor.shape[1] != want_in:
            raise LoadError(
                f"tensor {source!r} has shape {tuple(tensor.shape)}, expected {(shape[0], want_in)} from the config"
            )
        for part, t in quantize(tensor, self.spec, source).items():
            self.fill_part(pname, expert, part, t, source)

    def fill_part(self, pname: str, expert: int | None, part: str, tensor: torch.Tensor, source: str) -> None:
        """Copy one stored part of a quantized checkpoint into place, checking its shape and dtype."""
        dest = self._dest(pname, expert, part, source)
        if tuple(tensor.shape) != tuple(dest.shape) or tensor.dtype != dest.dtype:
            raise LoadError(
                f"tensor {source!r} is {str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}, expected "
                f"{str(dest.dtype).removeprefix('torch.')} {tuple(dest.shape)} for {self.spec.label} weights"
            )
        with torch.no_grad():
            dest.copy_(tensor)
        self.filled.add((pname, expert, part))

    def missing_head(self) -> bool:
        """Whether the output head is still unfilled (a checkpoint that ties it to the embeddings)."""
        return ("output.weight", None, "qweight") not in self.filled

    def missing(self) -> list[str]:
        """Stored-format names (as `mixchat quantize` writes them) of every part never filled."""
        out = []
        for pname, lin in self.linears.items():
            for part in lin.stored():
                if (pname, None, part) not in self.filled:
                    out.append(pname.removesuffix(".weight") + "." + part)
        for pname, (moe, w) in self.moes.items():
            layer = pname.rsplit(".", 1)[0]
            for part in moe.stored(w):
                for e in range(self.n_experts):
                    if (pname, e, part) not in self.filled:
                        out.append(f"{layer}.experts.{e}.{w}.{part}")
        return out


@torch.no_grad()
def fill_random_quantized(model: nn.Module, spec: QuantSpec, gen: torch.Generator, std: float = 0.02) -> None:
    """Random N(0, std) matrices for every quantized module, drawn and quantized one matrix at a time, so a
    random 7B shape at int4 never holds more than one full-precision matrix."""
    device = gen.device

    def draw(dests: dict[str, torch.Tensor], out: int, n_in: int, name: str) -> None:
        for r in range(0, out, ROW_BLOCK):  # one block of float32 rows at a time
            rows = min(ROW_BLOCK, out - r)
            w = torch.empty(rows, n_in, device=device).normal_(0.0, std, generator=gen)
            for part, t in quantize(w, spec, name).items():
                dests[part][r : r + rows].copy_(t)

    for pname, lin in QuantFiller(model, spec, 0).linears.items():
        draw(lin.stored(), lin.out_features, lin.in_features, pname)
    for pname, (moe, which) in QuantFiller(model, spec, 0).moes.items():
        stacked = moe.stored(which)
        E, out = stacked["qweight"].shape[:2]
        n_in = stacked["qweight"].shape[2] * (2 if spec.format == "int4" else 1)
        for e in range(E):
            draw({p: t[e] for p, t in stacked.items()}, out, n_in, f"{pname}[{e}]")
