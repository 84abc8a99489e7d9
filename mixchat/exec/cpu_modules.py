"""CPU module swaps for models the lean runner does not take (large, bf16, quantized).

The reference `MoeLayer.forward` groups a pass's tokens by expert: a sort, a bincount read to the host, an
`index_select` and an `index_add_` back. For the one or two tokens of a decode step that bookkeeping is
pure overhead, and on a busy 2-core machine `index_add_` alone was measured at 150 ms per call (its
threads wait on each other), more than the layer's matmuls. Here a decode-sized pass goes straight to each
token's chosen experts (the k (token, expert) pairs), adding each expert's output with its routing weight;
longer passes keep the reference's grouping. Same function, same routing record; only the order of the
k additions per token differs from the reference's.
"""

from __future__ import annotations

import torch
from torch import nn

from mixchat.model.layers import MoeLayer, Routing

PAIR_LIMIT = 4  # (token, expert) pairs up to which the MoE skips grouping by expert (as exec/cpu.py)


def moe_by_pairs(layer: MoeLayer, x: torch.Tensor, router_out: list[Routing] | None) -> torch.Tensor:
    """MoE output for a few tokens, one (token, chosen expert) pair at a time."""
    # x: [T, D]
    experts, weights = layer.route(x, router_out)  # [T, k] each
    out = torch.zeros_like(x)
    for t, (es, ws) in enumerate(zip(experts.tolist(), weights.tolist(), strict=True)):
        xt = x[t : t + 1]
        for e, w in zip(es, ws, strict=True):
            out[t : t + 1].add_(layer.expert(xt, e), alpha=w)
    return out


class CpuMoe(MoeLayer):
    def forward(self, x: torch.Tensor, router_out: list[Routing] | None = None) -> torch.Tensor:
        if x.shape[0] * self.k <= PAIR_LIMIT and not torch.is_grad_enabled():
            return moe_by_pairs(self, x, router_out)
        return super().forward(x, router_out)


def install_cpu_modules(model: nn.Module) -> list[str]:
    """Swap `CpuMoe` into a CPU model's MoE layers (quantized ones get the same path from `quant_cpu`)."""
    swapped = set()
    for module in model.modules():
        if type(module) is MoeLayer and module.w1.device.type == "cpu":
            module.__class__ = CpuMoe
            swapped.add("CpuMoe")
    return sorted(swapped)
