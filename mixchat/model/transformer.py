"""The Mistral/Mixtral decoder: embeddings, N x [attention + FFN or MoE], final norm, output head."""

from __future__ import annotations

import torch
from torch import nn

from mixchat.model.args import ModelArgs
from mixchat.model.attention import Attention, KVStore
from mixchat.model.layers import FeedForward, MoeLayer, RMSNorm, Routing
from mixchat.model.layout import BatchLayout
from mixchat.model.rope import Rotary


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward: FeedForward | MoeLayer
        if args.moe is not None:
            self.feed_forward = MoeLayer(args.dim, args.hidden_dim, args.moe.num_experts, args.moe.num_experts_per_tok)
        else:
            self.feed_forward = FeedForward(args.dim, args.hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        rot: torch.Tensor,
        layout: BatchLayout,
        cache: KVStore | None,
        router_out: list[Routing] | None,
    ) -> torch.Tensor:
        h, xn = self.add_norm(x, self.attention(self.attention_norm(x), rot, layout, cache), self.ffn_norm)
        return h + self.feed_forward(xn, router_out)

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, norm(x + delta)): the residual add and the norm after it, one kernel on a GPU."""
        h = x + delta
        return h, norm(h)


class Transformer(nn.Module):
    """Owns no cache and samples nothing: given tokens and their layout it returns logits."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList([TransformerBlock(args, i) for i in range(args.n_layers)])
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.rotary = Rotary(args.head_dim, args.rope_theta)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def set_experts_per_token(self, k: int) -> None:
        """Change top-k routing at run time (1..n_experts); weights renormalise over the chosen k."""
        if self.args.moe is None:
            raise ValueError("this model has no experts")
        if not 1 <= k <= self.args.moe.num_experts:
            raise ValueError(f"experts per token must be between 1 and {self.args.moe.num_experts}")
        for layer in self.layers:
            assert isinstance(layer.feed_forward, MoeLayer)
            layer.feed_forward.k = k

    @property
    def experts_per_token(self) -> int | None:
        if self.args.moe is None:
            return None
        ff = self.layers[0].feed_forward
        assert isinstance(ff, MoeLayer)
        return ff.k

    def forward(
        self,
        tokens: torch.Tensor,  # [T] packed token ids
        layout: BatchLayout,
        cache: KVStore | None = None,
        router_out: list[Routing] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:  # [T, vocab] or, with last_only, [B, vocab]
        h = self.tok_embeddings(tokens)  # [T, dim]
        rot = self.rotary.rotation(layout.positions)  # [T, 1, hd/2]
        for layer in self.layers:
            h = layer(h, rot, layout, cache, router_out)
        if last_only:
            h = h.index_select(0, layout.last_token_index())
        return self.output(self.norm(h)).float()
