"""The quantized weight formats, as stored on disk and held by the reference modules (docs/QUANTIZATION.md).

Both formats are weight-only: activations stay in the model's dtype, and a matmul dequantizes the weights
(the reference, `dequantize`) or reads the codes directly (the executors' kernels). The stored layout is the
same in memory and on disk and belongs to no device; a device's packed layout is made from it at load.

- int8: symmetric, one scale per output channel: w[r, k] = q[r, k] * scale[r], q in [-127, 127].
- int4: asymmetric, groups of G consecutive input elements of one row: w[r, k] = q[r, k] * scale[r, g] +
  zero[r, g] with g = k // G and q in [0, 15]; two codes a byte, element 2j in the low nibble and 2j + 1
  in the high one. `zero` is the value of code 0 (the group's minimum), a float like the scale.

Quantizing is always computed in float32 from the checkpoint tensor, whatever dtype the model runs in, so
`mixchat quantize` and quantizing while loading give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mixchat.errors import ConfigError, UserError

FORMATS = ("none", "int8", "int4")
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 128
INT8_SCALE_DTYPE = torch.float32  # per channel: negligible bytes, so full precision
INT4_SCALE_DTYPE = torch.bfloat16  # per group: 4 bytes per 128 weights (0.25 bits each)


@dataclass(frozen=True)
class QuantSpec:
    """How a model's quantizable matrices are held: format and (int4) the largest group size."""

    format: str = "none"  # "none", "int8" or "int4"
    group_size: int = DEFAULT_GROUP_SIZE  # int4 only; a matrix whose in-dimension it does not divide uses less

    @property
    def quantized(self) -> bool:
        return self.format != "none"

    @property
    def label(self) -> str:
        """What the fingerprint and `info` call it: "none", "int8" or "int4-g128"."""
        return f"int4-g{self.group_size}" if self.format == "int4" else self.format

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"format": self.format}
        if self.format == "int4":
            out["group_size"] = self.group_size
        return out

    @classmethod
    def from_json(cls, d: object) -> QuantSpec:
        """From params.json's `quantization` entry; a malformed entry is a ConfigError."""
        if not isinstance(d, dict) or d.get("format") not in FORMATS:
            raise ConfigError(f"params.json: 'quantization' must say format int8 or int4, got {d!r}")
        return make_spec(d["format"], d.get("group_size", DEFAULT_GROUP_SIZE))


def make_spec(fmt: str, group_size: int | None = None) -> QuantSpec:
    """A checked spec: an unknown format or group size is one clear line (ConfigError)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown quantization {fmt!r}: use none, int8 or int4")
    g = DEFAULT_GROUP_SIZE if group_size is None else group_size
    if g not in GROUP_SIZES:
        raise UserError(f"group size {g} is not supported: use 32, 64 or 128")
    return QuantSpec(fmt, g)


def spec_from_options(fmt: str | None, group_size: int | None) -> QuantSpec | None:
    """The spec asked for by --quant / --group-size (None: load the weights as stored)."""
    if fmt is None:
        if group_size is not None:
            raise UserError("--group-size needs --quant int4")
        return None
    if group_size is not None and fmt != "int4":
        raise UserError("--group-size applies to --quant int4 only")
    return make_spec(fmt, group_size)


def bytes_per_weight(spec: QuantSpec, elem: int) -> float:
    """Bytes read per weight of a quantized matrix (codes plus scales; `elem` for full precision): the
    divisor of a decode step's bandwidth bound."""
    if spec.format == "int8":
        return 1.0
    if spec.format == "int4":
        return 0.5 + 2 * INT4_SCALE_DTYPE.itemsize / spec.group_size
    return float(elem)


def group_for(in_features: int, group_size: int, name: str = "a matrix") -> int:
    """The int4 group size of one matrix: the largest of G, G/2, ..., 32 that divides its in-dimension."""
    g = group_size
    while g >= GROUP_SIZES[0]:
        if in_features % g == 0:
            return g
        g //= 2
    raise UserError(
        f"int4 groups of {group_size} (or down to {GROUP_SIZES[0]}) divide no dimension of {name} "
        f"(in-dimension {in_features}): use --quant int8"
    )


# ---- quantize / dequantize -------------------------------------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] (or [E, out, in]) -> (q int8 of the same shape, scale float32 [out] / [E, out])."""
    wf = w.float()
    amax = wf.abs().amax(dim=-1)  # [..., out]
    scale = (amax / 127.0).clamp_min(1e-12)  # an all-zero row keeps a tiny scale and codes 0
    q = torch.round(wf / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.to(INT8_SCALE_DTYPE)


def quantize_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., out, in] -> (codes uint8 [..., out, in / 2], scale [..., out, in / G], zero [..., out, in / G])."""
    *lead, n_in = w.shape
    wg = w.float().reshape(*lead, n_in // group, group)  # [..., out, groups, G]
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)  # [..., out, groups]
    # The stored (rounded) scale and zero are the ones the codes are computed against, so the dequantized
    # value is exactly what a reader of the file computes.
    scale = ((hi - lo) / 15.0).clamp_min(1e-12).to(INT4_SCALE_DTYPE)
    zero = lo.to(INT4_SCALE_DTYPE)
    codes = torch.round((wg - zero.float()[..., None]) / scale.float()[..., None]).clamp_(0, 15)
    codes = codes.to(torch.uint8).reshape(*lead, n_in)
    return pack_nibbles(codes), scale, zero


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 [..., n] -> [..., n / 2] bytes: element 2j low nibble, 2j + 1 high nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[..., n / 2] bytes -> uint8 codes [..., n] (the inverse of `pack_nibbles`)."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights from int8 codes and per-channel scales."""
    return q.float() * scale.float()[..., None]


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """float32 weights [..., out, in] from packed int4 codes and per-group scales and zeros."""
    codes = unpack_nibbles(packed).float()  # [..., out, in]
    *lead, n_in = codes.shape
    groups = scale.shape[-1]
    g = codes.reshape(*lead, groups, n_in // groups)
    return (g * scale.float()[..., None] + zero.float()[..., None]).reshape(*lead, n_in)


ROW_BLOCK = 1024  # rows quantized at a time: a float32 temporary of a 32000 x 4096 head would be 0.5 GB each


def quantize(w: torch.Tensor, spec: QuantSpec, name: str = "a matrix") -> dict[str, torch.Tensor]:
    """One matrix ([out, in]) in the stored format: {"qweight", "scales"[, "zeros"]}.

    Rows are independent in both formats, so a large matrix is quantized ROW_BLOCK rows at a time: the same
    bytes, with float32 temporaries of one block instead of several copies of the whole matrix (the peak
    memory of quantizing while loading is the quantized model plus about one tensor)."""
    if spec.format not in ("int8", "int4"):
        raise ValueError(f"not a quantized format: {spec.format}")
    group = group_for(w.shape[-1], spec.group_size, name) if spec.format == "int4" else 0
    blocks = [w[r : r + ROW_BLOCK] for r in range(0, w.shape[0], ROW_BLOCK)] if w.dim() == 2 else [w]
    parts: dict[str, list[torch.Tensor]] = {}
    for block in blocks:
        if spec.format == "int8":
            got = dict(zip(("qweight", "scales"), quantize_int8(block), strict=True))
        else:
            got = dict(zip(("qweight", "scales", "zeros"), quantize_int4(block, group), strict=True))
        for k, t in got.items():
            parts.setdefault(k, []).append(t)
    return {k: ts[0] if len(ts) == 1 else torch.cat(ts, 0) for k, ts in parts.items()}


def dequantize(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 weights from a stored matrix (the format is read from the tensors' dtypes)."""
    if parts["qweight"].dtype == torch.int8:
        return dequantize_int8(parts["qweight"], parts["scales"])
    return dequantize_int4(parts["qweight"], parts["scales"], parts["zeros"])


def stored_shapes(
    spec: QuantSpec, out_features: int, in_features: int, name: str = "a matrix"
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of each stored tensor of one [out, in] matrix."""
    if spec.format == "int8":
        return {"qweight": ((out_features, in_features), torch.int8), "scales": ((out_features,), INT8_SCALE_DTYPE)}
    g = group_for(in_features, spec.group_size, name)
    groups = (out_features, in_features // g)
    return {
        "qweight": ((out_features, in_features // 2), torch.uint8),
        "scales": (groups, INT4_SCALE_DTYPE),
        "zeros": (groups, INT4_SCALE_DTYPE),
    }


PARTS = ("qweight", "scales", "zeros")
