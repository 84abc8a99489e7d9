"""GPU modules for quantized weights: every quantized matmul through `quant_triton`'s kernel.

Swapped in like `gpu_modules.py`'s: the class changes, the stored buffers stay (the kernel reads the stored
format), and each forward falls back to the dequantizing reference when the kernel cannot serve the call.
The MoE keeps its bookkeeping on the device, so the same forward runs in a captured decode graph.
"""

from __future__ import annotations

import torch
from torch import nn

from mixchat.exec.moe_grouped import grouped_moe_forward
from mixchat.exec.quant_triton import Stored, quant_grouped_mm, quant_mm_works
from mixchat.model.layers import Routing
from mixchat.quant.modules import QuantLinear, QuantMoe


def _usable(x: torch.Tensor, fmt: str) -> bool:
    return not torch.is_grad_enabled() and quant_mm_works(x.device.type, x.dtype, fmt)


def quant_linear(x: torch.Tensor, stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """x W^T by the kernel, W given by its stored parts ([N, K(/2)] codes and their scales)."""
    q, scales, zeros = as_stored(stored)
    K = q.shape[1] * (2 if q.dtype == torch.uint8 else 1)
    z = None if zeros is None else zeros[None]
    y = quant_grouped_mm(x.reshape(-1, K), q[None], scales[None], z, None)
    return y.reshape(*x.shape[:-1], q.shape[0])


class TritonQuantLinear(QuantLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _usable(x, self.format):
            return super().forward(x)
        return quant_linear(x, self.stored())


class TritonQuantMoe(QuantMoe):
    def forward(self, x: torch.Tensor, router_out: list[Routing] | None = None) -> torch.Tensor:
        if not _usable(x, self.format):
            return super().forward(x, router_out)
        rows = x.shape[0]  # no expert gets more rows than the pass has tokens

        def mm(xs: torch.Tensor, which: str, offs: torch.Tensor) -> torch.Tensor:
            return quant_grouped_mm(xs, *expert_parts(self, which), offs, max_rows=rows)

        return grouped_moe_forward(self, x, router_out, quant_mm=mm)


def as_stored(parts: dict[str, torch.Tensor]) -> Stored:
    """A matrix's stored parts as the kernel takes them: codes, scales, zeros (int4) or None."""
    return parts["qweight"], parts["scales"], parts.get("zeros")


def expert_parts(moe: QuantMoe, which: str) -> Stored:
    """One stacked expert matrix ("w1", "w2", "w3") as the kernel takes it."""
    return as_stored(moe.stored(which))


def install_gpu_quant_modules(model: nn.Module, any_device: bool = False) -> list[str]:
    """Swap the Triton modules into a quantized CUDA model (whole or one stage); returns what was swapped.
    `any_device` swaps them into a CPU model too, for Triton's interpreter (tests/test_executors.py)."""
    swapped = set()
    params = list(model.parameters())
    if params and params[0].is_cuda:  # probe now: a probe synchronises, which a capturing stream must not
        for fmt in {m.format for m in model.modules() if isinstance(m, (QuantLinear, QuantMoe))}:
            quant_mm_works("cuda", params[0].dtype, fmt)
    for module in model.modules():
        if type(module) is QuantLinear and (module.qweight.is_cuda or any_device):
            module.__class__ = TritonQuantLinear
            swapped.add("TritonQuantLinear")
        elif type(module) is QuantMoe and (module.w1_qweight.is_cuda or any_device):
            module.__class__ = TritonQuantMoe
            swapped.add("TritonQuantMoe")
    return sorted(swapped)
