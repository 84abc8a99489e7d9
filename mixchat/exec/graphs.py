"""Decode steps on a GPU replayed from CUDA graphs.

A batch-1 decode step of Mixtral 8x7B is a few hundred small kernels. Launched one by one from Python, the
GPU waits on the host between them; a captured graph launches the whole step at once. Capture needs a step
whose shapes and pointers never change and which never waits for the GPU, so this path differs from the
eager `Transformer.forward` in three ways (the maths is the same):

- the per-step inputs (token ids, positions, cache slots, live key counts) live in static device buffers,
  refreshed before each replay by one copy from pinned host memory;
- the MoE runs as grouped GEMMs with device-side group sizes (`moe_grouped.py`): only the chosen experts'
  weights are read, and nothing is read back to the host;
- attention reads the whole rolling buffer of each row with a mask built on the device from the live key
  counts (torch SDPA), instead of xformers' padded-keys bias, whose sizes are Python integers fixed when
  it is built.

A graph bakes in the addresses of the cache tensors, the rows it serves and whether the routing is traced,
so graphs are kept per such key and captured on first use (a fraction of a second; it happens again only
when a full-attention cache grows or a new cache is made). The only synchronisation left in a step is the
caller reading the sampled token.

The step runs a contiguous range of layers with the ends of the model it owns, so the same code serves a
whole `Transformer` (all layers, token ids in, logits out) and a pipeline stage (`StageModel`): a stage
without the embeddings starts from a static hidden-state input buffer that the caller receives the previous
stage's activations into, and a stage without the head ends with its residual stream `h` in a static output
buffer, which the caller sends on. Sends and receives stay outside the graph (see `run_stage`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mixchat.cache import RollingCache
from mixchat.exec import fused_triton as ft
from mixchat.exec.moe_grouped import grouped_mm_works, grouped_moe_forward
from mixchat.exec.moe_triton import MAX_ROWS, expert_gemv, expert_gemv_works
from mixchat.exec.quant_gpu import TritonQuantLinear, TritonQuantMoe, expert_parts, quant_linear
from mixchat.exec.quant_triton import quant_grouped_mm, quant_mm_works, quant_swiglu
from mixchat.flags import Flags, flags
from mixchat.model.attention import Attention
from mixchat.model.attn_ops import attend
from mixchat.model.layers import MoeLayer, Routing
from mixchat.model.layout import BatchLayout
from mixchat.model.stage import StageModel
from mixchat.model.transformer import Transformer, TransformerBlock
from mixchat.quant.modules import QuantLinear, QuantMoe

MAX_GRAPHS = 8  # captured graphs kept (each holds a small private memory pool)


def graphs_supported(model: Transformer | StageModel, settings: Flags) -> bool:
    """CUDA graphs need a CUDA model (a whole one or one pipeline stage); a MoE model also needs grouped GEMMs
    (no host sync in routing). Wrappers (rank 0's `PipelineModel`) say no: their stage decides for itself."""
    if not isinstance(model, (Transformer, StageModel)) or model.device.type != "cuda":
        return False
    # Probed here, before any capture: the probes synchronise, which a capturing stream must not.
    if settings.fused:
        ft.fused_decode_works("cuda", model.dtype)  # also probes the norm kernel RMSNorm.forward uses
    if model.args.moe is None:
        return True
    # torch's grouped GEMM has CUDA kernels for bf16 only; other dtypes take a fallback that copies the group
    # sizes to the host, which a capture refuses (float32 MoE decode failed so on an H200). They run eagerly.
    if model.dtype != torch.bfloat16:
        return False
    expert_gemv_works("cuda", model.dtype)
    return grouped_mm_works("cuda", model.dtype)


def stage_graph_fits(cache: RollingCache, layout: BatchLayout) -> bool:
    """Whether a pipeline stage replays this step from a graph: every decode step, over all of the cache's
    rows or over a subset (a micro-batch; each row set has its graph, see `GraphDecoder._key`).

    Subset steps once hit a device-side index assert on two H200s and ran eagerly: the graph read its row
    ids from a tensor that nothing kept alive after capture, which `_Captured.row_idx` now owns (see there)."""
    return layout.mode == "decode" and layout.row_ids is not None  # distinct rows: `RollingCache.plan` checks


def _fuse_qkv(attn: Attention) -> dict[str, torch.Tensor]:
    """wq, wk and wv as one [(H + 2 Hkv) hd, D] matrix, so a decode step reads x once and launches one GEMV:
    {"weight": ...} for full-precision projections, their stored parts (codes, scales) for quantized ones.

    A separate concatenated copy would cost Mixtral 8x7B 1.6 GB in bf16 (32 layers x 50 MB), so instead
    each projection's tensors are re-pointed at row slices of the new ones and their old storage is freed:
    memory stays the same and the modules keep working as before.
    """
    mods = [attn.wq, attn.wk, attn.wv]
    names = list(mods[0].stored()) if isinstance(mods[0], QuantLinear) else ["weight"]
    fused: dict[str, torch.Tensor] | None = attn.__dict__.get("_fused_qkv")
    # An earlier GraphDecoder of this model fused them: reuse it if the weights still point into it.
    if fused is not None and all(_views_of(fused[n], [getattr(m, n) for m in mods]) for n in names):
        return fused
    fused = {}
    with torch.no_grad():
        for name in names:
            cat = torch.cat([getattr(m, name).data for m in mods])
            start = 0
            for m in mods:
                rows = getattr(m, name).shape[0]
                if name == "weight":
                    m.weight.data = cat[start : start + rows]
                else:  # a buffer
                    setattr(m, name, cat[start : start + rows])
                start += rows
            fused[name] = cat
    # Not a parameter or buffer: a plain attribute, so state dicts and saving do not see it twice.
    attn.__dict__["_fused_qkv"] = fused
    return fused


def _views_of(whole: torch.Tensor, parts: list[torch.Tensor]) -> bool:
    """Whether `parts` are consecutive row slices of `whole`, in order."""
    start = 0
    for p in parts:
        same = p.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()
        if not same or p.data_ptr() != whole[start].data_ptr():
            return False
        start += p.shape[0]
    return True


def _fused_serves(model: Transformer | StageModel) -> bool:
    """Whether the fused step can read this model's weights: full precision, or quantized with the Triton
    modules in place (`quant_gpu.py`), whose kernels passed their probe."""
    quant = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantMoe))]
    if any(type(m) not in (TritonQuantLinear, TritonQuantMoe) for m in quant):
        return False
    return all(quant_mm_works(model.device.type, model.dtype, f) for f in {m.format for m in quant})


def decoder_wanted(model: Transformer | StageModel, settings: Flags | None = None) -> bool:
    """Whether a whole model or a pipeline stage runs its decode steps through a `GraphDecoder`.
    MIXCHAT_CUDA_GRAPHS: "1" (default) graphs where supported, "0" never, "eager" the graph step's code run
    eagerly on any device (`_EagerReplay`), to check the step and its callers' static-buffer protocol where no
    graph can be captured. Never for models whose layers have different windows: the step's static inputs
    hold one slot and one live count per row, shared by every layer."""
    if getattr(model, "args", None) is not None and model.args.per_layer_windows:
        return False
    settings = settings or flags()
    if settings.cuda_graphs == "eager":
        return isinstance(model, (Transformer, StageModel))
    return settings.cuda_graphs == "1" and graphs_supported(model, settings)


class _EagerReplay:
    """Stands in for a captured graph where none is captured (MIXCHAT_CUDA_GRAPHS=eager, or on the CPU):
    each replay runs the step's code again and copies its results into the first run's buffers, so callers
    see the same static buffers, rewritten by each replay, as with a CUDA graph."""

    def __init__(self, run: Callable[[list[Routing]], torch.Tensor], out: torch.Tensor, routing: list[Routing]):
        self.run = run
        self.out = out
        self.routing = routing

    def replay(self) -> None:
        routing: list[Routing] = []
        self.out.copy_(self.run(routing))
        for static, new in zip(self.routing, routing, strict=True):
            for a, b in zip(static, new, strict=True):
                a.copy_(b)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph | _EagerReplay
    inputs: torch.Tensor  # [4, B] int64 on the device: tokens, positions, flat slots, live keys
    out: torch.Tensor  # [B, vocab] float32 logits (a model's back end) or [B, D] residual stream, per replay
    routing: list[Routing]  # per layer, rewritten by each replay (empty when not traced)
    hidden: torch.Tensor | None = None  # [B, D] static input of a stage without the embeddings
    # A stage's routing stacked over its layers by the graph itself ([L, B, k] int64, [L, B, k] float32,
    # [L, B, E] model dtype), ready to send in three messages; None for a whole model or when not traced.
    stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # Communication still reading `out` / `stacked` (dist.Work of sends): the next replay, which rewrites
    # them, first makes the stream wait for these. Never a host wait: NCCL's Work.wait() orders streams.
    fences: list[Any] = field(default_factory=list)
    host: torch.Tensor | None = None  # [4, B] int64 host staging of a stage graph's inputs (see `_staging`)
    # [B] int64 cache rows the graph index_selects (None: every row in order). A graph holds only the address
    # of each tensor it reads, so whatever it reads must be owned here, or the allocator reuses the memory.
    row_idx: torch.Tensor | None = None
    copied: torch.cuda.Event | None = None  # recorded after each copy from `host` (CUDA stages only)


def _project(x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """x times a fused projection (`_fuse_qkv`): full precision, or by the quantized kernel."""
    return F.linear(x, weights["weight"]) if "weight" in weights else quant_linear(x, weights)


def _experts(ff: MoeLayer, x: torch.Tensor, routed: ft.Routed) -> torch.Tensor:
    """The chosen experts' outputs for a decode step ([B*k, D], rows grouped by expert): two launches, the
    SwiGLU half reading w1 and w3 together, then w2, on full-precision or quantized experts."""
    if isinstance(ff, QuantMoe):
        rows = x.shape[0]  # no expert gets more rows than the step has tokens
        w1, w2, w3 = (expert_parts(ff, w) for w in ("w1", "w2", "w3"))
        hidden = quant_swiglu(x, w1, w3, routed.offs, routed.token_of, max_rows=rows)  # [B*k, F]
        return quant_grouped_mm(hidden, *w2, routed.offs, max_rows=rows)
    hidden = ft.expert_gemv_swiglu(x, ff.w1, ff.w3, routed.offs, routed.token_of)  # [B*k, F]
    return expert_gemv(hidden, ff.w2, routed.offs)


class GraphDecoder:
    def __init__(
        self, model: Transformer | StageModel, fused: bool | None = None, settings: Flags | None = None
    ) -> None:
        """`fused`: run the step with the fused Triton kernels (`fused_triton.py`). None decides: on for a
        CUDA model whose kernels pass their probe, unless MIXCHAT_FUSED=0.

        `model` is a whole `Transformer` or one pipeline `StageModel`; the step covers its layers, starting
        from token ids when it holds the embeddings (else from a hidden-state buffer) and ending with logits
        when it holds the final norm and head (else with the residual stream)."""
        self.model = model
        self.args = model.args
        blocks = model.layers.values() if isinstance(model, StageModel) else model.layers
        self.layers: list[TransformerBlock] = list(blocks)  # type: ignore[arg-type]
        self.embeddings = model.tok_embeddings  # None: a later pipeline stage, fed activations
        self.norm = model.norm  # None (and output None): an earlier pipeline stage, whose output is `h`
        self.output = model.output
        self.whole = self.embeddings is not None and self.output is not None
        settings = settings or flags()
        self.eager = model.device.type != "cuda" or settings.cuda_graphs == "eager"  # no capture: `_EagerReplay`
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pinned: dict[int, torch.Tensor] = {}
        if fused is None:
            fused = model.device.type == "cuda" and settings.fused and ft.fused_decode_works("cuda", model.dtype)
            fused = fused and _fused_serves(model)
        self.fused = fused
        self._qkv = [_fuse_qkv(layer.attention) for layer in self.layers] if fused else []

    @property
    def experts_per_token(self) -> int | None:
        for layer in self.layers:
            if isinstance(layer.feed_forward, MoeLayer):
                return int(layer.feed_forward.k)
        return None

    # ---- the step, as captured -----------------------------------------------------------------------
    def _step(
        self,
        cache: RollingCache,
        row_idx: torch.Tensor | None,  # [B] cache rows, or None when the step covers every row in order
        inputs: torch.Tensor,  # [4, B]
        router_out: list[Routing] | None,
        hidden: torch.Tensor | None = None,  # [B, D]: the input of a stage without the embeddings
    ) -> torch.Tensor:
        """One decode token per row. Every shape here depends only on B and the cache's slot count.

        The layout carries the positions, flat slots, rows and live counts as device tensors
        (`BatchLayout.device_live`; its host lists are placeholders), by which the cache's own `kv_for` writes
        and reads and the attention masks dead slots, so no host integer is baked into the graph. Without the
        fused kernels the step is the model's own forward fed from the static buffers: nothing here
        re-implements the maths.

        Returns [B, vocab] float32 logits when the model holds the head, else the residual stream [B, D]."""
        B, S = inputs.shape[1], cache.slots
        layout = BatchLayout(
            mode="decode", seqlens=[1] * B, kv_lens=[S] * B, window=cache.window, device=inputs.device,
            pos_list=[0] * B, rows=row_idx, slot_list=[0] * B, all_rows=row_idx is None, kv_padding=S,
            device_live=inputs[3], _positions=inputs[1], _write_dst=inputs[2],
        )  # fmt: skip
        model = self.model
        if self.fused:
            return self._step_fused(cache, layout, self._front(inputs, hidden), router_out)
        if isinstance(model, Transformer):
            return model(inputs[0], layout, cache, router_out)  # [B, vocab]
        h = model.run_layers(self._front(inputs, hidden), layout, cache, router_out)
        return h if model.output is None else model.head(h, layout, last_only=False)

    def _front(self, inputs: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """The residual stream entering the first layer here: embedded tokens, or the previous stage's `h`."""
        if self.embeddings is not None:
            return self.embeddings(inputs[0])  # [B, D]
        assert hidden is not None, "a stage without the embeddings starts from the previous stage's activations"
        return hidden

    def _step_fused(
        self, cache: RollingCache, layout: BatchLayout, h: torch.Tensor, router_out: list[Routing] | None
    ) -> torch.Tensor:
        """The step with the fused kernels (`h`: [B, D] entering the first layer): per Mixtral layer, the
        launches are

        qkv GEMV, rope_store, SDPA, wo GEMV, add_rmsnorm, gate GEMV, route_topk, expert_gemv_swiglu,
        expert_gemv (w2), combine_add_rmsnorm (MoE sum + residual + the next layer's attention norm); with
        quantized weights the GEMVs are `quant_triton`'s kernel on the codes (`_project`, `_experts`).

        The residual stream `h` and its normalised copy `x` come out of one kernel at each of the two adds,
        so no norm runs on its own except the first layer's here. At the end of a stage that does not hold
        the head, the norm that follows belongs to the next stage: what goes on is `h` itself, and the next
        stage starts with `rmsnorm(h)` of its first layer, exactly as a whole model's first layer does. The
        last combine here still normalises (with this layer's ffn norm weight, a stand-in) and that `x` is
        dropped: a [B, D] write, cheaper than a second kernel variant.
        """
        args = self.args
        B = h.shape[0]
        H, Hkv, hd = args.n_heads, args.n_kv_heads, args.head_dim
        cos_sin = torch.view_as_real(self.model.rotary.rotation(layout.positions))  # [B, 1, hd/2, 2] float32
        slots = layout.write_dst  # [B] flat slot of each row's new token
        assert slots is not None
        layers = self.layers
        first = layers[0].attention_norm
        x = ft.rmsnorm(h, first.weight, first.eps)
        # The norm after each layer's feed-forward: the next layer's, the model's, or the stand-in at a stage's end
        nexts = [b.attention_norm for b in layers[1:]] + [self.norm if self.norm is not None else layers[-1].ffn_norm]
        for li, (layer, nxt) in enumerate(zip(layers, nexts, strict=True)):  # li: the cache's (local) layer index
            qkv = _project(x, self._qkv[li])  # [B, (H + 2 Hkv) hd]
            q, k, v = (t.view(B, -1, hd) for t in qkv.split([H * hd, Hkv * hd, Hkv * hd], 1))  # [B, heads, hd]
            kc, vc = cache.k[li], cache.v[li]  # [Bc, S, Hkv, hd]
            q = ft.rope_store(q, k, v, cos_sin, kc.view(-1, Hkv, hd), vc.view(-1, Hkv, hd), slots)
            if layout.rows is not None:  # the served rows' buffers, dead slots masked by the live counts
                kc, vc = kc.index_select(0, layout.rows), vc.index_select(0, layout.rows)
            h, x = ft.add_norm(h, layer.attention.wo(attend(q, kc, vc, layout).reshape(B, H * hd)), layer.ffn_norm)
            ff = layer.feed_forward
            if isinstance(ff, MoeLayer) and ft.route_fits(B, ff.k, ff.num_experts) and B <= MAX_ROWS:
                logits = ff.gate(x)  # [B, E]
                routed = ft.route_topk(logits, ff.k)
                if router_out is not None:
                    router_out.append(Routing(routed.experts, routed.weights, logits))
                ys = _experts(ff, x, routed)  # [B*k, D] grouped by expert
                h, x = ft.combine_add_rmsnorm(h, ys, routed, nxt.weight, nxt.eps)
            else:
                delta = grouped_moe_forward(ff, x, router_out) if isinstance(ff, MoeLayer) else ff(x)
                h, x = ft.add_norm(h, delta, nxt)
        if self.output is None:
            return h  # [B, D]
        return self.output(x).float()  # [B, vocab]

    # ---- running it ----------------------------------------------------------------------------------
    def decode(
        self, cache: RollingCache, layout: BatchLayout, tokens: list[int], router_out: list[Routing] | None
    ) -> torch.Tensor:
        """Feed one token to each row of a decode `layout` (from `cache.plan`); the caller advances the cache."""
        cap = self._run(cache, layout, tokens, None, router_out is not None)
        if router_out is not None:
            router_out.extend(cap.routing)
        return cap.out

    def hidden_buffer(self, cache: RollingCache, layout: BatchLayout, traced: bool) -> torch.Tensor | None:
        """The static [B, D] input of the graph that will run this step, for the caller to receive the
        previous stage's activations straight into (no copy); None before that graph is captured."""
        assert layout.row_ids is not None
        cap = self._graphs.get(self._key(cache, layout.row_ids, traced))
        return None if cap is None else cap.hidden

    def run_stage(
        self,
        cache: RollingCache,
        layout: BatchLayout,
        traced: bool,
        tokens: Sequence[int] | None = None,
        hidden: torch.Tensor | None = None,  # [B, D]; best `hidden_buffer(...)` itself
    ) -> _Captured:
        """Run a pipeline stage's decode step; the caller advances the cache.

        Returns the graph's record: `out` holds the logits ([B, vocab] float32, last stage) or the residual
        stream ([B, D], for the next stage), `routing` / `stacked` the routing when traced. All are static
        buffers, rewritten by the next replay of the same graph: the caller sends them with NCCL on the
        current stream and appends each send's work to `fences`, which that next replay waits for on the
        stream first. Nothing here waits on the host, so the ranks' stages overlap across micro-batches.
        """
        first = self.embeddings is not None
        assert (tokens if first else hidden) is not None, "the first stage starts from tokens, a later one from h"
        return self._run(cache, layout, tokens, hidden, traced)

    def _key(self, cache: RollingCache, rows: Sequence[int], traced: bool) -> tuple:
        """What a graph bakes in. The cache's batch is part of it because a subset of rows does not imply it:
        a later cache of another batch at a freed cache's address must not replay that cache's graphs."""
        ptrs = (cache.k.data_ptr(), cache.v.data_ptr())
        return (tuple(rows), *ptrs, cache.batch, cache.slots, traced, self.experts_per_token)

    def _run(
        self,
        cache: RollingCache,
        layout: BatchLayout,
        tokens: Sequence[int] | None,
        hidden: torch.Tensor | None,
        traced: bool,
    ) -> _Captured:
        assert layout.mode == "decode" and layout.row_ids is not None and layout.slot_list is not None
        rows = layout.row_ids
        key = self._key(cache, rows, traced)
        cap = self._graphs.get(key)
        host = self._staging(cap, len(rows))
        host[0] = torch.tensor(tokens) if tokens is not None else 0
        host[1:] = torch.tensor([layout.pos_list, layout.slot_list, layout.kv_lens])
        if cap is None:
            cap = self._capture(cache, rows, host, traced, hidden)
            if not self.whole:
                cap.host = host
                if cache.device.type == "cuda":
                    cap.copied = torch.cuda.Event()
            self._graphs[key] = cap
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
            for work in cap.fences:  # the last replay's outputs are sent before this one rewrites them
                work.wait()
            cap.fences.clear()
            cap.inputs.copy_(host, non_blocking=True)
            if cap.copied is not None:
                cap.copied.record()
            if hidden is not None and hidden is not cap.hidden:
                assert cap.hidden is not None
                cap.hidden.copy_(hidden)
            cap.graph.replay()
        return cap

    @property
    def captured(self) -> int:
        """Graphs held now (the check script reports it to show the graph path ran)."""
        return len(self._graphs)

    @property
    def subset_row_sets(self) -> list[tuple[int, ...]]:
        """The rows of each graph held that serves only part of its cache (a micro-batch's steps)."""
        return [tuple(c.row_idx.tolist()) for c in self._graphs.values() if c.row_idx is not None]

    def _staging(self, cap: _Captured | None, B: int) -> torch.Tensor:
        """The pinned [4, B] host buffer this step's inputs are copied from.

        A whole model shares one per batch size: reusing it is safe because the copy that reads it is queued
        before the next step's host code can run past the caller's read of the sampled token. A pipeline
        rank queues steps without reading anything back in between (rank 0 submits every micro-batch before
        collecting any; the other ranks never read back at all), so a copy may still wait in the stream
        behind the previous micro-batch's receive when the host fills the next step: each stage graph keeps
        its own buffer, and an event says when its last copy has run (long since, in practice: that graph's
        previous step had to come back round before this one could be issued)."""
        if cap is not None and not self.whole:
            if cap.copied is not None:
                cap.copied.synchronize()
            assert cap.host is not None
            return cap.host
        buf = self._pinned.get(B) if self.whole else None
        if buf is None:
            buf = torch.empty(4, B, dtype=torch.long)
            buf = buf if self.model.device.type != "cuda" else buf.pin_memory()
            if self.whole:
                self._pinned[B] = buf
        return buf

    def _capture(
        self, cache: RollingCache, rows: list[int], host: torch.Tensor, traced: bool, hidden: torch.Tensor | None
    ) -> _Captured:
        inputs = host.to(cache.device, copy=True)  # a copy on the CPU too: the graph owns its inputs
        # A stage's input buffer: the tensor the activations were just received into becomes the graph's own.
        if hidden is not None:
            hidden = hidden.contiguous()
        row_idx = None if rows == list(range(cache.batch)) else torch.tensor(rows, device=cache.device)

        def run(routing: list[Routing]) -> torch.Tensor:
            return self._step(cache, row_idx, inputs, routing if traced else None, hidden)

        routing: list[Routing] = []
        if self.eager:  # no graph: the first run's results become the static buffers
            out = run(routing)
            routing, stacked = self._stack(routing)
            return _Captured(_EagerReplay(run, out, routing), inputs, out, routing, hidden, stacked, row_idx=row_idx)
        # Warm-up runs on a side stream (cuBLAS and the allocator settle there), then capture. The warm-up
        # writes this step's own K/V into this step's own slots, which the replay below writes again.
        stream = torch.cuda.Stream(cache.device)
        stream.wait_stream(torch.cuda.current_stream(cache.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                run([])
        torch.cuda.current_stream(cache.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # A pipeline rank captures while its NCCL work may be in flight: "thread_local" lets the process
        # group's watchdog thread query that work's events meanwhile (in "global" mode a query from another
        # thread during a capture invalidates it). The one-GPU path keeps torch's default.
        mode = "global" if self.whole else "thread_local"
        with torch.cuda.graph(graph, capture_error_mode=mode):
            out = run(routing)
            routing, stacked = self._stack(routing)
        graph.replay()
        return _Captured(graph, inputs, out, routing, hidden, stacked, row_idx=row_idx)

    def _stack(
        self, routing: list[Routing]
    ) -> tuple[list[Routing], tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """A stage's routing as three stacked tensors (sent as three messages) and per-layer views of them."""
        if not routing or self.whole:
            return routing, None
        stacked = (
            torch.stack([r.experts for r in routing]),  # [L, B, k]
            torch.stack([r.weights for r in routing]),  # [L, B, k]
            torch.stack([r.logits for r in routing]),  # [L, B, E]
        )
        return [Routing(stacked[0][i], stacked[1][i], stacked[2][i]) for i in range(len(routing))], stacked
