"""GPU inference modules swapped into a CUDA model at load, as gpt-fast swaps its linear layers.

The swap changes a module's class in place to a subclass here: same parameters and state, only `forward`
differs, falling back to the reference forward whenever its kernel cannot serve the call (autograd on,
another dtype, a failed probe). Changing `__class__` rather than building new modules keeps every reference
to the module (pipeline stages, graph decoders, state-dict names) valid; `restore_reference` swaps back.
"""

from __future__ import annotations

import torch
from torch import nn

from mixchat.exec import fused_triton as ft
from mixchat.exec.moe_grouped import grouped_mm_works, grouped_moe_forward
from mixchat.exec.xformers_attn import attend_xformers
from mixchat.flags import Flags
from mixchat.model.attention import Attention
from mixchat.model.layers import MoeLayer, RMSNorm, Routing
from mixchat.model.layout import BatchLayout
from mixchat.model.transformer import TransformerBlock
from mixchat.model.xformers_compat import kernels_work


def _inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and x.dtype == weight.dtype


class FusedRMSNorm(RMSNorm):
    """The norm in one Triton kernel instead of eight elementwise ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _inference(x, self.weight) and ft.fused_norm_works(x.device.type, x.dtype):
            return ft.rmsnorm(x, self.weight, self.eps)
        return super().forward(x)


class FusedBlock(TransformerBlock):
    """The residual add and the FFN norm in one Triton kernel."""

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        if _inference(x, norm.weight) and ft.fused_norm_works(x.device.type, x.dtype):
            return ft.add_norm(x, delta, norm)
        return super().add_norm(x, delta, norm)


class GroupedMoe(MoeLayer):
    """Grouped GEMMs with the group sizes kept on the device: no host sync, capturable in a graph."""

    def forward(self, x: torch.Tensor, router_out: list[Routing] | None = None) -> torch.Tensor:
        if _inference(x, self.w1) and grouped_mm_works(x.device.type, x.dtype):
            return grouped_moe_forward(self, x, router_out)
        return super().forward(x, router_out)


class XformersAttention(Attention):
    """Attention through xformers' memory-efficient kernels and the layout's block-diagonal bias.

    Not inside a captured decode step (`layout.device_live` set): xformers' bias holds its sizes as host
    integers fixed when it is built, so there the reference SDPA path, masked on the device, runs instead."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        if layout.device_live is not None:
            return super().attend(q, k, v, layout)
        return attend_xformers(q, k, v, layout)


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    RMSNorm: FusedRMSNorm,
    TransformerBlock: FusedBlock,
    MoeLayer: GroupedMoe,
    Attention: XformersAttention,
}


def install_gpu_modules(model: nn.Module, flags: Flags) -> list[str]:
    """Swap the GPU modules into a CUDA model (whole or one pipeline stage); returns what was swapped."""
    if next(model.parameters()).device.type != "cuda":
        return []
    wanted = dict(_SWAPS)
    if not flags.fused:
        del wanted[RMSNorm], wanted[TransformerBlock]
    if not (flags.xformers and kernels_work(str(next(model.parameters()).device))):
        del wanted[Attention]
    swapped = set()
    for module in model.modules():
        new = wanted.get(type(module))
        if new is not None:
            module.__class__ = new
            swapped.add(new.__name__)
    return sorted(swapped)


def restore_reference(model: nn.Module) -> None:
    """Undo `install_gpu_modules`: every module runs its reference forward again."""
    back = {new: old for old, new in _SWAPS.items()}
    for module in model.modules():
        old = back.get(type(module))
        if old is not None:
            module.__class__ = old
