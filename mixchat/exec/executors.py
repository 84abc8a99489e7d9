"""The one interface through which the engine runs a pass, and the executors behind it.

An executor takes a planned pass (the layout from `RollingCache.plan`, the tokens as host integers) and
returns each sequence's last logits. It never advances the cache (the engine does, once, after any
executor) and never samples. Which executor serves a model is decided once, by `mixchat.exec.choose`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from mixchat.cache import RollingCache
from mixchat.exec.cpu import CpuRunner
from mixchat.exec.graphs import GraphDecoder
from mixchat.model.args import ModelArgs
from mixchat.model.attention import KVStore
from mixchat.model.layers import Routing
from mixchat.model.layout import BatchLayout


class ModelLike(Protocol):
    """What the engine needs of a model: a whole `Transformer` or rank 0's `PipelineModel`."""

    args: ModelArgs

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def experts_per_token(self) -> int | None: ...

    def set_experts_per_token(self, k: int) -> None: ...

    def __call__(
        self,
        tokens: torch.Tensor,
        layout: BatchLayout,
        cache: KVStore | None = None,
        router_out: list[Routing] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor: ...


class Executor(Protocol):
    name: str

    def forward(
        self,
        tokens: Sequence[int],  # [T] the pass's tokens, sequences concatenated
        layout: BatchLayout,
        cache: RollingCache,
        router_out: list[Routing] | None,
        routing_last_only: bool,  # router_out wants each sequence's last token only ([B, k] per layer)
    ) -> torch.Tensor: ...  # [B, vocab] float32: each sequence's last logits


class ModuleExecutor:
    """The model's own forward: the reference, and the fallback of the executors below. It serves anything
    with the model protocol, such as rank 0's pipeline wrapper."""

    name = "module"

    def __init__(self, model: ModelLike) -> None:
        self.model = model

    def forward(
        self,
        tokens: Sequence[int],
        layout: BatchLayout,
        cache: RollingCache,
        router_out: list[Routing] | None,
        routing_last_only: bool,
    ) -> torch.Tensor:
        ids = torch.tensor(list(tokens), dtype=torch.long, device=self.model.device)
        logits = self.model(ids, layout, cache, router_out=router_out, last_only=True)
        if routing_last_only and router_out:
            keep_last_token_routing(router_out, layout)
        return logits


def keep_last_token_routing(router_out: list[Routing], layout: BatchLayout) -> None:
    """Cut a pass's per-token routing (every layer) down to each sequence's last token, in place: what a
    pre-fill reports (`LastTokenRoutes`) from a model that traced every token."""
    if router_out and router_out[0].experts.shape[0] != len(layout.seqlens):
        idx = layout.last_token_index()
        router_out[:] = [Routing(*(t.index_select(0, idx) for t in r)) for r in router_out]


class CpuExecutor(ModuleExecutor):
    """The CPU's executor for every model: the lean runner for small float32 models (`lean`), otherwise the
    module forward with the CPU kernels swapped in at load (bf16 matmuls, `quant_cpu`'s int8/int4 ones),
    where a big matmul's time dwarfs the module overhead the lean runner saves."""

    name = "cpu"

    def __init__(self, model: ModelLike, lean: bool = True) -> None:
        super().__init__(model)
        self.runner = CpuRunner(model) if lean else None  # type: ignore[arg-type]

    def forward(
        self,
        tokens: Sequence[int],
        layout: BatchLayout,
        cache: RollingCache,
        router_out: list[Routing] | None,
        routing_last_only: bool,
    ) -> torch.Tensor:
        if self.runner is None or not self.runner.usable():
            return super().forward(tokens, layout, cache, router_out, routing_last_only)
        ids = torch.tensor(list(tokens), dtype=torch.long)
        return self.runner.forward(ids, layout, cache, router_out, routing_last_only=routing_last_only)


class GraphExecutor(ModuleExecutor):
    """Decode steps replayed from CUDA graphs (`graphs.py`); pre-fill through the module forward."""

    name = "graphs"

    def __init__(self, model: ModelLike, decoder: GraphDecoder) -> None:
        super().__init__(model)
        self.decoder = decoder

    def forward(
        self,
        tokens: Sequence[int],
        layout: BatchLayout,
        cache: RollingCache,
        router_out: list[Routing] | None,
        routing_last_only: bool,
    ) -> torch.Tensor:
        if layout.mode == "decode":
            return self.decoder.decode(cache, layout, list(tokens), router_out)
        return super().forward(tokens, layout, cache, router_out, routing_last_only)
