"""One pipeline stage of the decoder: a contiguous run of layers, plus the ends of the model it owns.

A stage is what one rank holds when a model is split over several processes (`mixchat.distributed`).
Rank 0 owns the embeddings, the last rank the final norm and output head, and every rank its own layers.
Blocks keep their global `layer_id` and the module names stay those of the whole model (`layers.17.…`), so
checkpoint tensors map onto a stage by name and cache rows and routing traces line up across stages.

The stage computes; it never communicates. Moving activations between ranks is the driver's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mixchat.model.args import ModelArgs
from mixchat.model.attention import KVStore
from mixchat.model.layers import MoeLayer, RMSNorm, Routing
from mixchat.model.layout import BatchLayout
from mixchat.model.rope import Rotary
from mixchat.model.transformer import TransformerBlock


@dataclass(frozen=True)
class StagePart:
    """Which part of the model a stage holds."""

    layers: range
    first: bool  # holds the token embeddings
    last: bool  # holds the final norm and the output head


class StageModel(nn.Module):
    def __init__(self, args: ModelArgs, part: StagePart) -> None:
        super().__init__()
        self.args = args
        self.part = part
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim) if part.first else None
        # A ModuleDict keyed by the global layer index keeps parameter names identical to the full model's.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(args, i) for i in part.layers})
        self.norm = RMSNorm(args.dim, args.norm_eps) if part.last else None
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False) if part.last else None
        self.rotary = Rotary(args.head_dim, args.rope_theta)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def set_experts_per_token(self, k: int) -> None:
        for layer in self.layers.values():
            if isinstance(layer.feed_forward, MoeLayer):
                layer.feed_forward.k = k

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:  # [T] -> [T, dim]
        assert self.tok_embeddings is not None, "only the first stage embeds tokens"
        return self.tok_embeddings(tokens)

    def run_layers(
        self,
        h: torch.Tensor,  # [T, dim]
        layout: BatchLayout,
        cache: KVStore | None,
        router_out: list[Routing] | None,
    ) -> torch.Tensor:
        rot = self.rotary.rotation(layout.positions)  # [T, 1, hd/2]
        for layer in self.layers.values():
            h = layer(h, rot, layout, cache, router_out)
        return h

    def head(self, h: torch.Tensor, layout: BatchLayout, last_only: bool) -> torch.Tensor:
        """[T, vocab] float32 logits, or [B, vocab] for each sequence's last token."""
        assert self.norm is not None and self.output is not None, "only the last stage has the output head"
        if last_only:
            h = h.index_select(0, layout.last_token_index())
        return self.output(self.norm(h)).float()
