"""CPU module swaps for models the lean runner does not take (large, bf16, quantized).

The reference `MoeLayer.forward` groups a pass's tokens by expert: a sort, a bincount read to the host, an
`index_select` and an `index_add_` back. For the one or two tokens of a decode step that bookkeeping is
pure overhead, and on a busy 2-core machine `index_add_` alone was measured at 150 ms per call (its
threads wait on each other), more than the layer's matmuls. Here a decode-sized pass goes straight to each
token's chosen experts (the k (token, expert) pairs), adding each expert's output with its routing weight;
longer passes keep the reference's grouping. Same function, same routing record; only the order of the
k additions per token differs from the reference's.

A bf16 matrix times one row is also slow through `F.linear` on this CPU build (measured on the 2-core VM,
one thread: a [7168, 1024] bf16 GEMV 23.5 ms through `F.linear`, no faster than float32's 22.4 ms, against
10.8 ms through `torch.mv`), so `CpuLinear` and `CpuMoe` multiply a single bf16 row with `torch.mv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixchat.model.layers import MoeLayer, Routing

PAIR_LIMIT = 4  # (token, expert) pairs up to which the MoE skips grouping by expert (also exec/cpu.py)


def _matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T for x [n, K], w [N, K]; one bf16 / fp16 row through torch.mv (see the module docstring)."""
    if x.dim() == 2 and x.shape[0] == 1 and x.dtype in (torch.bfloat16, torch.float16):
        return torch.mv(w, x[0]).unsqueeze(0)
    return F.linear(x, w)


class CpuLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        return _matmul(x, self.weight)


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
    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().expert(x, e)
        h = F.silu(_matmul(x, self.w1[e])) * _matmul(x, self.w3[e])
        return _matmul(h, self.w2[e])

    def forward(self, x: torch.Tensor, router_out: list[Routing] | None = None) -> torch.Tensor:
        if x.shape[0] * self.k <= PAIR_LIMIT and not torch.is_grad_enabled():
            return moe_by_pairs(self, x, router_out)
        return super().forward(x, router_out)


def install_cpu_modules(model: nn.Module) -> list[str]:
    """Swap `CpuMoe` and `CpuLinear` into a CPU model (quantized layers get theirs from `quant_cpu`)."""
    swapped = set()
    for module in model.modules():
        if type(module) is MoeLayer and module.w1.device.type == "cpu":
            module.__class__ = CpuMoe
            swapped.add("CpuMoe")
        elif type(module) is nn.Linear and module.weight.device.type == "cpu":
            module.__class__ = CpuLinear
            swapped.add("CpuLinear")
    return sorted(swapped)
