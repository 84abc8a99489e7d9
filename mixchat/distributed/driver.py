"""Rank 0's side of a pipeline: a model, a cache and an engine with the ordinary interfaces.

The engine and everything above it (sessions, front ends) run unchanged on rank 0: `PipelineModel` has
the `forward(tokens, layout, cache, router_out, last_only)` of `Transformer`, `PipelineCache` is a
`RollingCache` (its own rows hold rank 0's layers), and `PipelineEngine` makes such caches. Behind those
interfaces each operation is announced to the other ranks on the command channel first, so their caches
go through exactly the same plans, writes and resets as rank 0's.

A forward pass: rank 0 embeds the tokens and runs its layers, sends the activations on; each rank runs its
layers and passes them on; the last rank applies the head and sends the logits back to rank 0, and every
rank sends its layers' routing trace back when the engine asked for one. `submit` returns at once after
rank 0's own share, so with several passes in flight (micro-batches) the stages work at the same time.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence

import torch

from mixchat.cache import RollingCache, RowSnapshot, UndoPoint
from mixchat.distributed.comm import Op, PipelineGroup
from mixchat.distributed.follower import MAX_UNFINISHED_SENDS
from mixchat.distributed.partition import micro_batches
from mixchat.engine import Engine, LastTokenRoutes
from mixchat.exec.choose import choose_stage_decoder
from mixchat.exec.executors import keep_last_token_routing
from mixchat.exec.graphs import GraphDecoder, stage_graph_fits
from mixchat.exec.memory import peak_memory_bytes
from mixchat.model.layers import MoeLayer, Routing
from mixchat.model.layout import BatchLayout
from mixchat.model.stage import StageModel, StagePart
from mixchat.quant.modules import weight_bytes


class PendingPass:
    """A pass whose first stage has run; `wait` collects the logits (and routing) from the other ranks."""

    def __init__(
        self, model: PipelineModel, n_out: int, n_tokens: int, k: int, routing: list[Routing] | None, sent: list
    ) -> None:  # type: ignore[type-arg]
        self.model = model
        self.n_out = n_out
        self.n_tokens = n_tokens
        self.k = k
        self.routing = routing
        self.sent = sent
        self.logits: torch.Tensor | None = None

    def wait(self, router_out: list[Routing] | None = None) -> torch.Tensor:
        self.model.complete(self)
        assert self.logits is not None
        if router_out is not None and self.routing is not None:
            router_out.extend(self.routing)
        return self.logits


class PipelineModel:
    """The model as rank 0 sees it: its own stage here, the rest of the layers on the other ranks."""

    def __init__(self, stage: StageModel, group: PipelineGroup, parts: Sequence[StagePart]) -> None:
        self.stage = stage
        self.group = group
        self.parts = list(parts)
        self.args = stage.args
        self.micro_batches = 1  # split a pass of several sequences into this many pipelined passes
        self.lock = threading.RLock()  # one rank-0 thread at a time talks to the other ranks
        self._in_flight: deque[PendingPass] = deque()
        self._freed: list[int] = []
        self._next_cache = 0
        # On a GPU, rank 0's decode steps replay its layers (embeddings included) from CUDA graphs, as every
        # other rank does for its own (cuda_graphs.py); pre-fill, and everything on the CPU, runs eagerly.
        self.graphs: GraphDecoder | None = choose_stage_decoder(stage)

    @property
    def device(self) -> torch.device:
        return self.stage.device

    @property
    def dtype(self) -> torch.dtype:
        return self.stage.dtype

    def eval(self) -> PipelineModel:
        return self

    # ---- experts -----------------------------------------------------------------------------------------
    @property
    def experts_per_token(self) -> int | None:
        if self.args.moe is None:
            return None
        ff = next(iter(self.stage.layers.values())).feed_forward
        assert isinstance(ff, MoeLayer)
        return ff.k

    def set_experts_per_token(self, k: int) -> None:
        if self.args.moe is None:
            raise ValueError("this model has no experts")
        if not 1 <= k <= self.args.moe.num_experts:
            raise ValueError(f"experts per token must be between 1 and {self.args.moe.num_experts}")
        if k == self.experts_per_token:
            return
        with self.lock:
            self.stage.set_experts_per_token(k)
            self.command(Op.SET_EXPERTS, k)

    # ---- commands ----------------------------------------------------------------------------------------
    def command(self, op: Op, *args: int, payload: Sequence[int] = ()) -> None:
        with self.lock:
            while self._freed:
                self.group.post(Op.FREE_CACHE, self._freed.pop())
            self.group.post(op, *args, payload=payload)

    def new_cache_id(self) -> int:
        self._next_cache += 1
        return self._next_cache

    def release(self, cache_id: int) -> None:
        """Called when a cache is garbage-collected; the other ranks drop theirs with the next command."""
        self._freed.append(cache_id)

    def drain(self) -> None:
        """Finish every pass in flight (before commands that move cache contents)."""
        with self.lock:
            while self._in_flight:
                self.complete(self._in_flight[0])

    def peak_memory(self) -> list[int]:
        """Peak memory of every rank, in bytes (GPU memory allocated, or resident memory on the CPU)."""
        g = self.group
        with self.lock:
            self.drain()
            self.command(Op.PEAK_MEMORY)
            others = [int(g.recv([1], torch.long, r, back=True).item()) for r in range(1, g.world)]
        return [peak_memory_bytes(self.device), *others]

    def weight_bytes(self) -> list[int]:
        """Bytes of every rank's weights, rank 0 first: each rank holds (and, with --quant, quantized while
        loading) only its own layers, so a split model's ranks each hold about 1/N of it."""
        g = self.group
        with self.lock:
            self.drain()
            self.command(Op.WEIGHT_BYTES)
            others = [int(g.recv([1], torch.long, r, back=True).item()) for r in range(1, g.world)]
        return [weight_bytes(self.stage) or 0, *others]

    def shutdown(self) -> None:
        import torch.distributed as dist

        with self.lock:
            self.drain()
            self.command(Op.EXIT)
            self.group.flush()
            dist.barrier(group=self.group.control)

    # ---- forward passes ----------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return self.forward(*args, **kwargs)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,  # [T]
        layout: BatchLayout,
        cache: PipelineCache | None = None,
        router_out: list[Routing] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        if not isinstance(cache, PipelineCache):
            raise ValueError("a pipeline-parallel model runs only with a PipelineCache")
        return self.collect(self.start(tokens, layout, cache, router_out is not None, last_only), router_out)

    @torch.inference_mode()
    def start(
        self, tokens: torch.Tensor, layout: BatchLayout, cache: PipelineCache, traced: bool, last_only: bool
    ) -> list[PendingPass]:
        """Submit a pass as up to `micro_batches` passes of contiguous groups of its sequences (each planned on
        the cache as a pass of its own, before the caller advances it); returns without waiting for any."""
        n = len(layout.seqlens)
        m = min(self.micro_batches, n)
        if m <= 1:
            return [self.submit(tokens, layout, cache, traced, last_only)]
        assert layout.row_ids is not None
        rows = list(layout.row_ids)
        starts = [0, *itertools.accumulate(layout.seqlens)]
        passes = []
        for group in micro_batches(n, m):
            a, b = group.start, group.stop
            sub = cache.plan(layout.seqlens[a:b], rows[a:b])
            passes.append(self.submit(tokens[starts[a] : starts[b]], sub, cache, traced, last_only))
        return passes

    def collect(self, passes: list[PendingPass], router_out: list[Routing] | None = None) -> torch.Tensor:
        """The logits of a started pass (its micro-batches' in order), and its routing per layer."""
        if len(passes) == 1:
            return passes[0].wait(router_out)
        traces: list[list[Routing]] = []
        outs = []
        for p in passes:
            r: list[Routing] | None = [] if router_out is not None else None
            outs.append(p.wait(r))
            if r is not None:
                traces.append(r)
        if router_out is not None:
            for layer in zip(*traces, strict=True):
                router_out.append(Routing(*(torch.cat(parts) for parts in zip(*layer, strict=True))))
        return torch.cat(outs)

    @torch.inference_mode()
    def submit(
        self, tokens: torch.Tensor, layout: BatchLayout, cache: PipelineCache, traced: bool, last_only: bool
    ) -> PendingPass:
        """Announce a pass, run rank 0's stage on it and send the activations on; returns without waiting."""
        assert layout.row_ids is not None
        rows = list(layout.row_ids)
        n_tokens = int(tokens.shape[0])
        token_ids = tokens.tolist()
        with self.lock:
            self.command(
                Op.FORWARD,
                cache.cache_id,
                len(rows),
                n_tokens,
                int(last_only),
                int(traced),
                payload=[*rows, *layout.seqlens, *token_ids],
            )
            routing: list[Routing] | None = [] if traced else None
            if self.graphs is not None and stage_graph_fits(cache, layout):
                # One graph replay; `h` and the routing are the graph's static buffers. The send's work fences
                # the next replay of the same graph (on the stream), which would rewrite `h`.
                cap = self.graphs.run_stage(cache, layout, traced, tokens=token_ids)
                h = cap.out  # [B, D]
                if routing is not None:
                    routing.extend(cap.routing)
                work = self.group.send(h, 1)
                cap.fences.append(work)
                sent = [(work, h)]
            else:
                h = self.stage.run_layers(self.stage.embed(tokens), layout, cache, routing)
                sent = [(self.group.send(h, 1), h)]
            p = PendingPass(
                self, len(rows) if last_only else n_tokens, n_tokens, self.experts_per_token or 0, routing, sent
            )
            self._in_flight.append(p)
        return p

    def complete(self, p: PendingPass) -> None:
        """Receive the results of every pass up to and including `p`, in the order they were submitted."""
        with self.lock:
            while p.logits is None:
                q = self._in_flight.popleft()
                self._receive(q)

    def _receive(self, p: PendingPass) -> None:
        g = self.group
        p.logits = g.recv([p.n_out, self.args.vocab_size], torch.float32, g.last, back=True)
        if p.routing is not None and self.args.moe is not None:
            E = self.args.moe.num_experts
            for r in range(1, g.world):
                L = len(self.parts[r].layers)
                experts = g.recv([L, p.n_tokens, p.k], torch.long, r, back=True)
                weights = g.recv([L, p.n_tokens, p.k], torch.float32, r, back=True)
                gate = g.recv([L, p.n_tokens, E], self.dtype, r, back=True)
                p.routing.extend(Routing(experts[i], weights[i], gate[i]) for i in range(L))
        for work, _ in p.sent:
            work.wait()
        p.sent = []


class PipelineCache(RollingCache):
    """A RollingCache whose rows hold rank 0's layers; the other ranks keep theirs under the same id.

    Planning, advancing and attending happen on every rank from the same commands, so they agree without
    being told. Operations that change rows outside a pass are mirrored explicitly; `snapshot` gathers all
    layers to rank 0 and `restore` deals them out, so a saved cache does not depend on the partition.
    """

    keeps_undo_log = False  # its undo points hold rank 0's layers only: going back one turn pre-fills again

    def __init__(self, model: PipelineModel, batch: int, max_context: int | None = None) -> None:
        super().__init__(
            model.args, batch, model.device, model.dtype, layers=model.parts[0].layers, max_context=max_context
        )
        self.model = model
        self.cache_id = model.new_cache_id()
        model.command(Op.NEW_CACHE, self.cache_id, batch, max_context or 0)
        weakref.finalize(self, model.release, self.cache_id)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole cache, over all ranks (every layer's buffer has the same size)."""
        return super().nbytes // len(self.layers) * self.args.n_layers

    def snapshot(self, row: int = 0) -> RowSnapshot:
        m, g = self.model, self.model.group
        with m.lock:
            m.drain()
            m.command(Op.SNAPSHOT, self.cache_id, row)
            own = super().snapshot(row)
            live = int(own.k.shape[1])
            ks, vs = [own.k], [own.v]
            if live:
                shape = own.k.shape[2:]
                for r in range(1, g.world):
                    L = len(m.parts[r].layers)
                    ks.append(g.recv([L, live, *shape], self.dtype, r, back=True))
                    vs.append(g.recv([L, live, *shape], self.dtype, r, back=True))
        return RowSnapshot(torch.cat(ks), torch.cat(vs), own.seen)

    def restore(self, snap: RowSnapshot, row: int = 0) -> None:
        live = int(snap.k.shape[1])
        if live > self.capacity:
            raise ValueError(f"snapshot holds {live} tokens but the cache has {self.capacity} slots")
        kv_shape = (self.args.n_kv_heads, self.args.head_dim)
        if snap.k.shape[0] != self.args.n_layers or tuple(snap.k.shape[2:]) != kv_shape:
            raise ValueError("snapshot shape does not match this cache")
        m, g = self.model, self.model.group
        with m.lock:
            m.drain()
            m.command(Op.RESTORE, self.cache_id, row, snap.seen, live)
            if live:
                works = []
                for r in range(1, g.world):
                    layers = m.parts[r].layers
                    for t in (snap.k, snap.v):
                        part = t[layers.start : layers.stop].to(self.device, self.dtype).contiguous()
                        works.append((g.send(part, r), part))
                for work, _ in works:
                    work.wait()
            own = m.parts[0].layers
            super().restore(RowSnapshot(snap.k[own.start : own.stop], snap.v[own.start : own.stop], snap.seen), row)

    def reset(self, row: int = 0) -> None:
        self.model.command(Op.RESET, self.cache_id, row)
        super().reset(row)

    def undo_point(self, row: int, n: int) -> UndoPoint:
        self.model.command(Op.UNDO_POINT, self.cache_id, row, n)
        return super().undo_point(row, n)

    def rollback(self, point: UndoPoint) -> None:
        """Undo to `point`; the other ranks go back to the undo point they took last for this cache."""
        self.model.command(Op.ROLLBACK, self.cache_id)
        super().rollback(point)


# Micro-batches a pre-fill keeps in flight. Each sends up to four tensors back to rank 0 from the last rank
# (logits and three of routing), and a follower waits once it has more unfinished sends than
# MAX_UNFINISHED_SENDS: beyond this, it would stop reading commands until rank 0 collects.
PREFILL_MICRO_BATCHES_IN_FLIGHT = MAX_UNFINISHED_SENDS // 4


class PipelineEngine(Engine):
    """The ordinary engine; its caches are pipeline caches, and its pre-fill streams.

    A pre-fill chunk's logits matter only for the sequences it ends, so rank 0 starts the next chunk as soon
    as its own stage has run the last one: chunk k + 1 runs on rank 0 while chunk k runs on rank 1, and with
    micro-batches, one group's chunk on one rank while another group's is on the next. Every rank still
    runs the passes in the order they were issued, so the caches go through the same plans as before."""

    model: PipelineModel  # type: ignore[assignment]

    def new_cache(self, batch: int = 1, max_context: int | None = None) -> PipelineCache:
        return PipelineCache(self.model, batch, max_context)

    @property
    def prefill_depth(self) -> int:  # type: ignore[override]
        return max(1, PREFILL_MICRO_BATCHES_IN_FLIGHT // max(1, self.model.micro_batches))

    def start_pass(
        self,
        cache: RollingCache,
        rows: Sequence[int],
        chunks: Sequence[Sequence[int]],
        router_out: list[Routing] | None = None,
    ) -> Callable[[], torch.Tensor]:
        if not isinstance(cache, PipelineCache):
            return super().start_pass(cache, rows, chunks, router_out)
        layout = cache.plan([len(c) for c in chunks], rows)
        tokens = torch.tensor([t for c in chunks for t in c], dtype=torch.long, device=self.device)
        with self.model.lock:
            passes = self.model.start(tokens, layout, cache, router_out is not None, last_only=True)
            cache.advance(layout)

        def collect() -> torch.Tensor:
            logits = self.model.collect(passes, router_out)
            if isinstance(router_out, LastTokenRoutes):
                keep_last_token_routing(router_out, layout)
            return logits

        return collect
