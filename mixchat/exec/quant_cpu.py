"""CPU fast paths for the quantized modules: torch's weight-only int8 and int4 matmuls.

`torch.ops.aten._weight_int8pack_mm` multiplies bf16 activations by int8 weights with per-channel scales,
reading the stored codes as they are. `_weight_int4pack_mm_for_cpu` wants its own packed layout (made here,
at load, by `_convert_weight_to_int4pack_for_cpu`) and a [groups, out, 2] table of scale and offset for a
code minus 8; the stored format's zero is the value of code 0, so the offset is zero + 8 * scale. Both
kernels read each weight byte once per call, which is what a decode step is bound by.

Both run in the activations' dtype (bf16 is the fast one: int8 with float32 activations is several times
slower than a float32 matmul on this build, which is why quantized models default to bf16 activations).
Each kernel is probed once per (format, shape) against the dequantized reference; a kernel that is missing
or disagrees leaves the module on its reference forward, and a dtype the kernel lacks is computed in bf16.
The MoE's w1 and w3 are concatenated ([E, 2F, D]) so one matmul per expert computes both.

The int4 swap replaces the stored codes by the packed ones (one copy of the weights in memory, not two),
so a swapped int4 module has only its fast forward; `mixchat quantize` and the tests read the stored format
from a model that was never swapped.
"""

from __future__ import annotations

import functools
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mixchat.exec.cpu_modules import PAIR_LIMIT, moe_by_pairs
from mixchat.model.layers import Routing
from mixchat.quant.format import ROW_BLOCK, dequantize, unpack_nibbles
from mixchat.quant.modules import QuantLinear, QuantMoe

FAST = torch.bfloat16  # the activation dtype both kernels are fast in, and the fallback for other dtypes


class _ByDtype:
    """A scale table, converted to the activations' dtype on first use. The float32 source is dropped then
    (it would cost a 7B int4 model 0.45 GB); a later call in another dtype converts from the first copy."""

    def __init__(self, table: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        """`dtype`: the model's activations, converted to at once."""
        self.source: torch.Tensor | None = table.float().contiguous()
        self.copies: dict[torch.dtype, torch.Tensor] = {}
        if dtype is not None:
            self.get(dtype)

    def get(self, dtype: torch.dtype) -> torch.Tensor:
        t = self.copies.get(dtype)
        if t is None:
            base = self.source if self.source is not None else next(iter(self.copies.values()))
            t = self.copies[dtype] = base.to(dtype).contiguous()
            self.source = None
        return t


def _act_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else FAST


def _qmm(x: torch.Tensor, w: torch.Tensor, group: int, table: _ByDtype) -> torch.Tensor:
    """x [T, K] @ w.T -> [T, N] in x's dtype. `group` 0: int8 codes [N, K] and scales [N]; else torch's CPU
    int4 layout of [N, K] and its scale-and-offset table [K / G, N, 2]."""
    dt = _act_dtype(x)
    if group == 0:
        y = torch.ops.aten._weight_int8pack_mm(x.to(dt), w, table.get(dt))
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dt), w, group, table.get(dt))
    return y.to(x.dtype)


def pack_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored int4 ([N, K / 2] bytes, [N, groups] scale and zero) -> torch's CPU (packed, [groups, N, 2])."""
    N = qweight.shape[0]
    # Rows are packed in blocks (torch's layout keeps blocks of 64 rows apart), so the int32 codes that the
    # packing op wants never exist for the whole matrix at once (0.5 GB for a 32000 x 4096 head).
    step = ROW_BLOCK if N % 64 == 0 else N
    packed = torch.cat([
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(qweight[r : r + step]).to(torch.int32), 1)
        for r in range(0, N, step)
    ])  # fmt: skip
    s, z = scales.float(), zeros.float()
    sz = torch.stack([s, z + 8.0 * s], dim=-1).transpose(0, 1).contiguous()  # [groups, N, 2]
    return packed, sz


@functools.cache
def kernel_works(fmt: str, n: int, k: int, group: int) -> bool:
    """Whether torch's kernel for `fmt` runs on an [n, k] matrix with bf16 activations and agrees with the
    dequantized reference."""
    from mixchat.quant.format import quantize_int4, quantize_int8

    # 64 rows stand for any multiple of 64 (the kernels treat row blocks alike), so probing the output head
    # does not allocate a float32 copy of it
    rows = 64 if n % 64 == 0 else n
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(rows, k, generator=g) * 0.02
        x = torch.randn(3, k, generator=g).to(FAST)
        if fmt == "int8":
            q, s = quantize_int8(w)
            got = _qmm(x, q, 0, _ByDtype(s))
            ref_w = dequantize({"qweight": q, "scales": s})
        else:
            q4, s4, z4 = quantize_int4(w, group)
            packed, sz = pack_int4(q4, s4, z4)
            got = _qmm(x, packed, group, _ByDtype(sz))
            ref_w = dequantize({"qweight": q4, "scales": s4, "zeros": z4})
        want = x.float() @ ref_w.t()
        return bool(((got.float() - want).abs().max() <= 2e-2 * want.abs().max() + 1e-6).item())
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        return False


class CpuQuantLinear(QuantLinear):
    """`QuantLinear` through torch's CPU kernel (int8: the stored codes; int4: packed at load)."""

    group: int  # 0 for int8
    scale_table: _ByDtype
    packed: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        w = self.qweight if self.format == "int8" else self.packed
        y = _qmm(x.reshape(-1, self.in_features), w, self.group, self.scale_table)
        return y.reshape(*x.shape[:-1], self.out_features)


class CpuQuantMoe(QuantMoe):
    """`QuantMoe` with each expert's w1 | w3 as one quantized matrix and torch's CPU kernels."""

    group13: int
    group2: int
    w2_in: int
    tables13: list[_ByDtype]  # per expert
    tables2: list[_ByDtype]
    w13_q: torch.Tensor
    w2_q: torch.Tensor
    w13_packed: torch.Tensor
    w2_packed: torch.Tensor

    def forward(self, x: torch.Tensor, router_out: list[Routing] | None = None) -> torch.Tensor:
        if x.shape[0] * self.k <= PAIR_LIMIT and not torch.is_grad_enabled():
            return moe_by_pairs(self, x, router_out)
        return super().forward(x, router_out)

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        hidden = self.w2_in
        w13, w2 = (self.w13_q, self.w2_q) if self.format == "int8" else (self.w13_packed, self.w2_packed)
        h = _qmm(x, w13[e], self.group13, self.tables13[e])
        return _qmm(F.silu(h[:, :hidden]) * h[:, hidden:], w2[e], self.group2, self.tables2[e])


def _group(scales: torch.Tensor, n_in: int) -> int:
    return n_in // scales.shape[-1]


@torch.no_grad()
def _swap_linear(m: QuantLinear, act: torch.dtype | None) -> bool:
    N, K = m.out_features, m.in_features
    G = 0 if m.format == "int8" else _group(m.scales, K)
    if not kernel_works(m.format, N, K, G):
        return False
    table = m.scales
    if G:
        packed, table = pack_int4(m.qweight, m.scales, m.zeros)
        for part in ("qweight", "scales", "zeros"):
            delattr(m, part)
        m.register_buffer("packed", packed)
    m.__class__ = CpuQuantLinear
    c = cast(CpuQuantLinear, m)
    c.group, c.scale_table = G, _ByDtype(table, act)
    return True


@torch.no_grad()
def _swap_moe(m: QuantMoe, act: torch.dtype | None) -> bool:
    s1, s2, s3 = m.stored("w1"), m.stored("w2"), m.stored("w3")
    E, hidden = s1["qweight"].shape[:2]
    D = s2["qweight"].shape[1]
    groups = (0, 0) if m.format == "int8" else (_group(s1["scales"], D), _group(s2["scales"], hidden))
    if not (kernel_works(m.format, 2 * hidden, D, groups[0]) and kernel_works(m.format, D, hidden, groups[1])):
        return False
    if m.format == "int8":
        m.register_buffer("w13_q", torch.cat([s1["qweight"], s3["qweight"]], 1))  # [E, 2F, D]
        m.register_buffer("w2_q", s2["qweight"])
        s13 = torch.cat([s1["scales"], s3["scales"]], 1)
        tables13 = [_ByDtype(s13[e], act) for e in range(E)]
        tables2 = [_ByDtype(s2["scales"][e], act) for e in range(E)]
    else:
        p13, p2, tables13, tables2 = [], [], [], []
        for e in range(E):
            p, sz = pack_int4(*(torch.cat([s1[k][e], s3[k][e]], 0) for k in ("qweight", "scales", "zeros")))
            p13.append(p)
            tables13.append(_ByDtype(sz, act))
            p, sz = pack_int4(s2["qweight"][e], s2["scales"][e], s2["zeros"][e])
            p2.append(p)
            tables2.append(_ByDtype(sz, act))
        m.register_buffer("w13_packed", torch.stack(p13))
        m.register_buffer("w2_packed", torch.stack(p2))
    for w in ("w1", "w2", "w3"):
        for part in list(m.stored(w)):
            delattr(m, f"{w}_{part}")
    m.__class__ = CpuQuantMoe
    c = cast(CpuQuantMoe, m)
    c.tables13, c.tables2 = tables13, tables2
    c.group13, c.group2 = groups
    c.w2_in = hidden
    return True


def install_cpu_quant_modules(model: nn.Module) -> list[str]:
    """Swap the CPU kernels into a quantized CPU model (whole or one stage); returns what was swapped."""
    swapped = set()
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    act = floats[0] if floats else None  # the model's dtype: its activations' (norm weights, embeddings)
    for module in list(model.modules()):
        if type(module) is QuantLinear and module.qweight.device.type == "cpu" and _swap_linear(module, act):
            swapped.add(f"CpuQuantLinear[{module.format}]")
        elif type(module) is QuantMoe and module.w1_qweight.device.type == "cpu" and _swap_moe(module, act):
            swapped.add(f"CpuQuantMoe[{module.format}]")
    return sorted(swapped)
