"""The loop every rank but 0 runs: wait for a command from rank 0, carry it out on this stage, repeat.

A follower holds its stage's weights and, per cache rank 0 has made, the rows of its own layers. It never
reads the terminal and prints nothing but errors. Commands arrive in the order rank 0 issued them, and
each is carried out completely before the next is read, so every rank's caches go through the same plans.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mixchat.cache import RollingCache, RowSnapshot, UndoPoint
from mixchat.distributed.comm import Command, Op, PipelineGroup, SentWork
from mixchat.exec.choose import choose_stage_decoder
from mixchat.exec.graphs import GraphDecoder, stage_graph_fits
from mixchat.exec.memory import peak_memory_bytes
from mixchat.model.layers import Routing
from mixchat.model.layout import BatchLayout
from mixchat.model.stage import StageModel
from mixchat.quant.modules import weight_bytes

MAX_UNFINISHED_SENDS = 16


class Follower:
    def __init__(self, stage: StageModel, group: PipelineGroup) -> None:
        self.stage = stage
        self.group = group
        self.caches: dict[int, RollingCache] = {}
        self.undo: dict[int, UndoPoint] = {}
        self.sending: list[tuple[SentWork, torch.Tensor]] = []
        # On a GPU, decode steps replay this stage's layers from CUDA graphs (cuda_graphs.py); pre-fill, and
        # everything on the CPU, runs the modules eagerly.
        self.graphs: GraphDecoder | None = choose_stage_decoder(stage)

    @torch.inference_mode()
    def run(self) -> None:
        """Until rank 0 says EXIT."""
        while True:
            cmd = self.group.receive()
            if cmd.op == Op.EXIT:
                self._finish_sends(0)
                dist.barrier(group=self.group.control)
                return
            self.handle(cmd)

    def handle(self, cmd: Command) -> None:
        a = cmd.args
        if cmd.op == Op.FORWARD:
            self.forward(cmd)
        elif cmd.op == Op.NEW_CACHE:
            s = self.stage
            self.caches[a[0]] = RollingCache(
                s.args, a[1], self.group.device, s.dtype, layers=s.part.layers, max_context=a[2] or None
            )
        elif cmd.op == Op.FREE_CACHE:
            self.caches.pop(a[0], None)
            self.undo.pop(a[0], None)
        elif cmd.op == Op.SNAPSHOT:
            snap = self.caches[a[0]].snapshot(a[1])
            if snap.k.shape[1]:
                self._send_back(snap.k, snap.v)
        elif cmd.op == Op.RESTORE:
            cache = self.caches[a[0]]
            row, seen, live = a[1], a[2], a[3]
            shape = [len(self.stage.part.layers), live, self.stage.args.n_kv_heads, self.stage.args.head_dim]
            if live:
                k = self.group.recv(shape, self.stage.dtype, 0)
                v = self.group.recv(shape, self.stage.dtype, 0)
            else:
                k = torch.empty(shape, dtype=self.stage.dtype, device=self.group.device)
                v = torch.empty_like(k)
            cache.restore(RowSnapshot(k, v, seen), row)
        elif cmd.op == Op.RESET:
            self.caches[a[0]].reset(a[1])
        elif cmd.op == Op.UNDO_POINT:
            self.undo[a[0]] = self.caches[a[0]].undo_point(a[1], a[2])
        elif cmd.op == Op.ROLLBACK:
            self.caches[a[0]].rollback(self.undo[a[0]])
        elif cmd.op == Op.SET_EXPERTS:
            self.stage.set_experts_per_token(a[0])
        elif cmd.op == Op.PEAK_MEMORY:
            self._send_back(torch.tensor([peak_memory_bytes(self.group.device)], device=self.group.device))
        elif cmd.op == Op.WEIGHT_BYTES:
            self._send_back(torch.tensor([weight_bytes(self.stage) or 0], device=self.group.device))
        else:
            raise RuntimeError(f"unknown pipeline command {cmd.op}")

    def forward(self, cmd: Command) -> None:
        cache_id, n_seqs, n_tokens, last_only, traced = cmd.args[:5]
        rows = cmd.payload[:n_seqs]
        seqlens = cmd.payload[n_seqs : 2 * n_seqs]
        # The token ids (payload[2 * n_seqs:]) are for rank 0's embeddings; this stage starts from activations.
        cache = self.caches[cache_id]
        layout = cache.plan(seqlens, rows)
        if self.graphs is not None and stage_graph_fits(cache, layout):
            self._decode_graph(cache, layout, bool(traced))
            cache.advance(layout)
            return
        g, s = self.group, self.stage
        h = g.recv([n_tokens, s.args.dim], s.dtype, g.rank - 1)
        routing: list[Routing] | None = [] if traced else None
        h = s.run_layers(h, layout, cache, routing)
        self._finish_sends(MAX_UNFINISHED_SENDS)
        if s.part.last:
            self._send_back(s.head(h, layout, bool(last_only)))
        else:
            out = h.contiguous()
            self.sending.append((g.send(out, g.rank + 1), out))
        if routing:
            self._send_back(
                torch.stack([r.experts for r in routing]),
                torch.stack([r.weights for r in routing]),
                torch.stack([r.logits for r in routing]),
            )
        cache.advance(layout)

    def _decode_graph(self, cache: RollingCache, layout: BatchLayout, traced: bool) -> None:
        """A decode step as one graph replay of this stage's layers, between a receive and sends.

        The activations arrive straight in the graph's static input (after its first capture); the outputs
        leave from its static buffers, and the sends' works become the graph's fences, so its next replay
        waits on the stream (not the host) until they have gone. Same messages, in the same order, as the
        eager path: activations on (or logits back), then the stacked routing when traced.
        """
        assert self.graphs is not None
        g, s = self.group, self.stage
        B = len(layout.seqlens)
        buf = self.graphs.hidden_buffer(cache, layout, traced)
        h = g.recv([B, s.args.dim], s.dtype, g.rank - 1, out=buf)  # [B, D]
        cap = self.graphs.run_stage(cache, layout, traced, hidden=h)
        self._finish_sends(MAX_UNFINISHED_SENDS)
        if s.part.last:
            works = self._send_back(cap.out)  # [B, vocab] float32
        else:
            work = g.send(cap.out, g.rank + 1)  # [B, D]
            self.sending.append((work, cap.out))
            works = [work]
        if cap.stacked is not None:
            works += self._send_back(*cap.stacked)
        cap.fences.extend(works)

    def _send_back(self, *tensors: torch.Tensor) -> list[SentWork]:
        works = []
        for t in tensors:
            t = t.contiguous()
            work = self.group.send(t, 0, back=True)
            self.sending.append((work, t))
            works.append(work)
        return works

    def _finish_sends(self, keep: int) -> None:
        while len(self.sending) > keep:
            work, _ = self.sending.pop(0)
            work.wait()
