"""Sparse MoE as three grouped GEMMs whose group sizes stay on the device.

`MoeLayer.forward` reads the group sizes back to the host (`bincount().tolist()`) to slice each expert's
rows: on a GPU a host-device synchronisation in every layer of every step, which also makes the step
impossible to capture in a CUDA graph. Here the group boundaries (`offs`, cumulative row counts per expert)
are a device tensor handed to `torch._grouped_mm`; an expert that received no token is an empty group, its
weights not read. All shapes depend only on the number of tokens, so the same code runs eagerly for
pre-fill and inside a captured decode graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mixchat.exec.moe_triton import MAX_ROWS, expert_gemv, expert_gemv_works
from mixchat.model.layers import MoeLayer, Routing


@functools.cache
def grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `torch._grouped_mm` runs for this device and dtype (it needs a recent torch, and on CUDA
    a GPU generation with the grouped-GEMM kernels). Probed once with a tiny problem."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        dev = torch.device(device_type)
        a = torch.ones(4, 16, device=dev, dtype=dtype)
        b = torch.ones(2, 16, 16, device=dev, dtype=dtype).transpose(1, 2)
        offs = torch.tensor([1, 4], device=dev, dtype=torch.int32)
        out = torch._grouped_mm(a, b, offs=offs)
        return bool(torch.isfinite(out.float()).all().item())
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _gmm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    # x: [N, in] rows grouped by expert; w: [E, out, in] stacked expert weights -> [N, out]
    return torch._grouped_mm(x, w.transpose(1, 2), offs=offs)


def grouped_moe_forward(
    layer: MoeLayer,
    x: torch.Tensor,
    router_out: list[Routing] | None = None,
    quant_mm: Callable[[torch.Tensor, str, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The same function as `MoeLayer.forward` (semantics 5), with no host synchronisation. `quant_mm`
    (rows, "w1" / "w2" / "w3", offs) multiplies by quantized expert weights instead (`quant_gpu.py`)."""
    # x: [T, D]
    E, k = layer.num_experts, layer.k
    experts, weights = layer.route(x, router_out)  # [T, k] each
    flat = experts.reshape(-1)  # [T*k]
    order = torch.argsort(flat, stable=True)  # assignments grouped by expert
    # Rows per expert without bincount (whose output size is data-dependent): compare against 0..E-1.
    counts = (flat[:, None] == torch.arange(E, device=x.device)[None, :]).sum(0)  # [E]
    offs = torch.cumsum(counts, 0).to(torch.int32)  # [E] end row of each expert's group
    token_of = order // k  # [T*k] token of each sorted assignment
    xs = x.index_select(0, token_of)  # [T*k, D]
    # Decode-sized passes (an expert gets at most one row per token) stream weights with the GEMV kernel.
    small = x.is_cuda and x.shape[0] <= MAX_ROWS and expert_gemv_works(x.device.type, x.dtype)
    if quant_mm is not None:
        h = F.silu(quant_mm(xs, "w1", offs)) * quant_mm(xs, "w3", offs)  # [T*k, F]
        ys = quant_mm(h, "w2", offs)  # [T*k, D]
    else:
        mm = expert_gemv if small else _gmm
        h = F.silu(mm(xs, layer.w1, offs)) * mm(xs, layer.w3, offs)  # [T*k, F]
        ys = mm(h, layer.w2, offs)  # [T*k, D]
    ys = ys * weights.reshape(-1).index_select(0, order)[:, None].to(ys.dtype)
    out = torch.zeros_like(x)
    out.index_add_(0, token_of, ys)
    return out
