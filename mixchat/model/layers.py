"""Normalisation and feed-forward blocks: dense SwiGLU (Mistral) and sparse mixture of experts (Mixtral)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: bf16 squares lose too much precision for long hidden states.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor, router_out: list[Routing] | None = None) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Routing(NamedTuple):
    """One layer's routing decision for the tokens of a pass."""

    experts: torch.Tensor  # [T, k] expert ids, strongest first
    weights: torch.Tensor  # [T, k] float32, softmax over the k selected gate logits
    logits: torch.Tensor  # [T, n_experts] raw gate logits (for the load-balancing loss)


def top_k_routing(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantics 5: the k largest gate logits per token (strongest first) and a float32 softmax over them.

    logits: [T, E] -> experts [T, k], weights [T, k]. Every executor routes through this function (the fused
    GPU kernel computes the same, and is probed against it)."""
    top_logits, experts = torch.topk(logits, k, dim=-1)
    return experts, torch.softmax(top_logits, dim=-1, dtype=torch.float32)


class MoeLayer(nn.Module):
    """Sparse mixture of SwiGLU experts with top-k routing.

    Expert weights are stacked ([E, out, in]) so a token group multiplies against a view of one expert's
    slice: no expert weight is copied, and only experts that received tokens are computed.
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, k: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.k = k
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))

    def route(self, x: torch.Tensor, router_out: list[Routing] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k experts per token and their weights (softmax over the k chosen logits, in float32)."""
        logits = self.gate(x)  # [T, E]
        experts, weights = top_k_routing(logits, self.k)  # [T, k] each
        if router_out is not None:
            router_out.append(Routing(experts, weights, logits))
        return experts, weights

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert e's SwiGLU on its rows ([n, D] -> [n, D]); a quantized layer overrides only this."""
        return F.linear(F.silu(F.linear(x, self.w1[e])) * F.linear(x, self.w3[e]), self.w2[e])

    def forward(self, x: torch.Tensor, router_out: list[Routing] | None = None) -> torch.Tensor:
        # x: [T, D]
        k = self.k
        experts, weights = self.route(x, router_out)
        flat = experts.reshape(-1)  # [T*k]
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        token_of = order // k  # token index of each sorted assignment
        xs = x.index_select(0, token_of)  # [T*k, D] grouped by expert
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            ys[start : start + n] = self.expert(xs[start : start + n], e)
            start += n
        ys = ys * weights.reshape(-1)[order, None].to(ys.dtype)
        out = torch.zeros_like(x)
        out.index_add_(0, token_of, ys)
        return out
