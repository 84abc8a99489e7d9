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
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixchat.cache import RollingCache
from mixchat.model import fused_triton as ft
from mixchat.model.attention import Attention
from mixchat.model.layers import FeedForward, MoeLayer, Routing
from mixchat.model.layout import BatchLayout
from mixchat.model.moe_grouped import grouped_mm_works, grouped_moe_forward
from mixchat.model.moe_triton import MAX_ROWS, expert_gemv, expert_gemv_works
from mixchat.model.rope import apply_rotary
from mixchat.model.transformer import Transformer

MAX_GRAPHS = 8  # captured graphs kept (each holds a small private memory pool)


def graphs_supported(model: Transformer) -> bool:
    """CUDA graphs need a CUDA model; a MoE model also needs grouped GEMMs (no host sync in routing)."""
    if not isinstance(model, Transformer) or model.device.type != "cuda":
        return False  # pipeline stages and wrappers run eagerly
    # Probed here, before any capture: the probes synchronise, which a capturing stream must not.
    if ft.fused_enabled():
        ft.fused_decode_works("cuda", model.dtype)  # also probes the norm kernel RMSNorm.forward uses
    if model.args.moe is None:
        return True
    expert_gemv_works("cuda", model.dtype)
    return grouped_mm_works("cuda", model.dtype)


def _fuse_qkv(attn: Attention) -> torch.Tensor:
    """One [(H + 2 Hkv) hd, D] weight for q, k and v, so a decode step reads x once and launches one GEMV.

    A separate concatenated copy would cost Mixtral 8x7B 1.6 GB (32 layers x 50 MB), so instead wq, wk and
    wv are re-pointed at row slices of the new tensor and their old storage is freed: memory stays the same
    and the modules keep working (and saving) as before.
    """
    ws = [attn.wq.weight, attn.wk.weight, attn.wv.weight]
    fused = attn.__dict__.get("_fused_qkv")
    if fused is not None:  # an earlier GraphDecoder of this model: reuse if the weights still point into it
        start = 0
        for w in ws:
            same = w.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
            if not same or w.data_ptr() != fused[start].data_ptr():
                break
            start += w.shape[0]
        else:
            return fused
    with torch.no_grad():
        cat = torch.cat([w.data for w in ws])
        start = 0
        for w in ws:
            n = w.shape[0]
            w.data = cat[start : start + n]
            start += n
    # Not a parameter or buffer: a plain attribute, so state dicts and saving do not see it twice.
    attn.__dict__["_fused_qkv"] = cat
    return cat


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # [4, B] int64 on the device: tokens, positions, flat slots, live keys
    logits: torch.Tensor  # [B, vocab] float32, rewritten by each replay
    routing: list[Routing]  # per layer, rewritten by each replay (empty when not traced)


class GraphDecoder:
    def __init__(self, model: Transformer, fused: bool | None = None) -> None:
        """`fused`: run the step with the fused Triton kernels (`fused_triton.py`). None decides: on for a
        CUDA model whose kernels pass their probe, unless MIXCHAT_FUSED=0."""
        self.model = model
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pinned: dict[int, torch.Tensor] = {}
        if fused is None:
            fused = model.device.type == "cuda" and ft.fused_enabled() and ft.fused_decode_works("cuda", model.dtype)
        self.fused = fused
        self._qkv: list[torch.Tensor] = [_fuse_qkv(layer.attention) for layer in model.layers] if fused else []

    # ---- the step, as captured -----------------------------------------------------------------------
    def _step(
        self,
        cache: RollingCache,
        row_idx: torch.Tensor | None,  # [B] cache rows, or None when the step covers every row in order
        inputs: torch.Tensor,  # [4, B]
        router_out: list[Routing] | None,
    ) -> torch.Tensor:
        """One decode token per row. Every shape here depends only on B and the cache's slot count."""
        if self.fused:
            return self._step_fused(cache, row_idx, inputs, router_out)
        return self._step_unfused(cache, row_idx, inputs, router_out)

    def _step_unfused(
        self,
        cache: RollingCache,
        row_idx: torch.Tensor | None,
        inputs: torch.Tensor,
        router_out: list[Routing] | None,
    ) -> torch.Tensor:
        """The step as plain torch ops (~60 kernels a Mixtral layer); the fallback of `_step_fused`."""
        model, args = self.model, self.model.args
        tokens, positions, slots, live = inputs[0], inputs[1], inputs[2], inputs[3]  # each [B]
        B = inputs.shape[1]
        S = cache.slots
        H, Hkv, hd = args.n_heads, args.n_kv_heads, args.head_dim
        h = model.tok_embeddings(tokens)  # [B, D]
        rot = model.rotary.rotation(positions)  # [B, 1, hd/2]
        visible = torch.arange(S, device=cache.device)[None, :] < live[:, None]  # [B, S]
        mask = visible[:, None, None, :]  # [B, 1, 1, S]
        for li, layer in enumerate(model.layers):
            attn = layer.attention
            x = layer.attention_norm(h)
            q = apply_rotary(attn.wq(x).view(B, H, hd), rot)
            k = apply_rotary(attn.wk(x).view(B, Hkv, hd), rot)
            v = attn.wv(x).view(B, Hkv, hd)
            kc, vc = cache.k[li], cache.v[li]  # [Bc, S, Hkv, hd]
            kc.view(-1, Hkv, hd).index_copy_(0, slots, k)
            vc.view(-1, Hkv, hd).index_copy_(0, slots, v)
            if row_idx is not None:
                kc, vc = kc.index_select(0, row_idx), vc.index_select(0, row_idx)
            out = F.scaled_dot_product_attention(
                q[:, :, None, :],  # [B, H, 1, hd]
                kc.transpose(1, 2),  # [B, Hkv, S, hd]
                vc.transpose(1, 2),
                attn_mask=mask,
                enable_gqa=Hkv != H,
            )  # [B, H, 1, hd]
            h = h + attn.wo(out.reshape(B, H * hd))
            x = layer.ffn_norm(h)
            ff = layer.feed_forward
            if isinstance(ff, MoeLayer):
                h = h + grouped_moe_forward(ff, x, router_out)
            else:
                assert isinstance(ff, FeedForward)
                h = h + ff(x)
        return model.output(model.norm(h)).float()  # [B, vocab]

    def _step_fused(
        self,
        cache: RollingCache,
        row_idx: torch.Tensor | None,
        inputs: torch.Tensor,
        router_out: list[Routing] | None,
    ) -> torch.Tensor:
        """`_step_unfused` with the fused kernels: per Mixtral layer, the launches are

        qkv GEMV, rope_store, SDPA, wo GEMV, add_rmsnorm, gate GEMV, route_topk, expert_gemv_swiglu,
        expert_gemv (w2), combine_add_rmsnorm (MoE sum + residual + the next layer's attention norm).

        The residual stream `h` and its normalised copy `x` come out of one kernel at each of the two adds,
        so no norm runs on its own except the first layer's.
        """
        model, args = self.model, self.model.args
        tokens, positions, slots, live = inputs[0], inputs[1], inputs[2], inputs[3]  # each [B]
        B = inputs.shape[1]
        S = cache.slots
        H, Hkv, hd = args.n_heads, args.n_kv_heads, args.head_dim
        h = model.tok_embeddings(tokens)  # [B, D]
        cos_sin = torch.view_as_real(model.rotary.rotation(positions))  # [B, 1, hd/2, 2] float32, all layers
        visible = torch.arange(S, device=cache.device)[None, :] < live[:, None]  # [B, S]
        mask = visible[:, None, None, :]  # [B, 1, 1, S]
        layers = model.layers
        first = layers[0].attention_norm
        x = ft.rmsnorm(h, first.weight, first.eps)
        for li, layer in enumerate(layers):
            attn = layer.attention
            qkv = F.linear(x, self._qkv[li])  # [B, (H + 2 Hkv) hd]
            q = qkv[:, : H * hd].view(B, H, hd)
            k = qkv[:, H * hd : (H + Hkv) * hd].view(B, Hkv, hd)
            v = qkv[:, (H + Hkv) * hd :].view(B, Hkv, hd)
            kc, vc = cache.k[li], cache.v[li]  # [Bc, S, Hkv, hd]
            q = ft.rope_store(q, k, v, cos_sin, kc.view(-1, Hkv, hd), vc.view(-1, Hkv, hd), slots)
            if row_idx is not None:
                kc, vc = kc.index_select(0, row_idx), vc.index_select(0, row_idx)
            out = F.scaled_dot_product_attention(
                q[:, :, None, :],  # [B, H, 1, hd]
                kc.transpose(1, 2),  # [B, Hkv, S, hd]
                vc.transpose(1, 2),
                attn_mask=mask,
                enable_gqa=Hkv != H,
            )  # [B, H, 1, hd]
            norm = layer.ffn_norm
            h, x = ft.add_rmsnorm(h, attn.wo(out.reshape(B, H * hd)), norm.weight, norm.eps)
            nxt = layers[li + 1].attention_norm if li + 1 < len(layers) else model.norm
            ff = layer.feed_forward
            if isinstance(ff, MoeLayer) and ft.route_fits(B, ff.k, ff.num_experts) and B <= MAX_ROWS:
                logits = ff.gate(x)  # [B, E]
                routed = ft.route_topk(logits, ff.k)
                if router_out is not None:
                    router_out.append(Routing(routed.experts, routed.weights, logits))
                hidden = ft.expert_gemv_swiglu(x, ff.w1, ff.w3, routed.offs, routed.token_of)  # [B*k, F]
                ys = expert_gemv(hidden, ff.w2, routed.offs)  # [B*k, D] grouped by expert
                h, x = ft.combine_add_rmsnorm(h, ys, routed, nxt.weight, nxt.eps)
            else:
                delta = grouped_moe_forward(ff, x, router_out) if isinstance(ff, MoeLayer) else ff(x)
                h, x = ft.add_rmsnorm(h, delta, nxt.weight, nxt.eps)
        return model.output(x).float()  # [B, vocab]

    # ---- running it ----------------------------------------------------------------------------------
    def decode(
        self, cache: RollingCache, layout: BatchLayout, tokens: list[int], router_out: list[Routing] | None
    ) -> torch.Tensor:
        """Feed one token to each row of a decode `layout` (from `cache.plan`); the caller advances the cache."""
        assert layout.mode == "decode" and layout.row_ids is not None and layout.slot_list is not None
        rows = layout.row_ids
        host = self._pinned_for(len(rows))
        host[0] = torch.tensor(tokens)
        host[1] = torch.tensor(layout.pos_list)
        host[2] = torch.tensor(layout.slot_list)
        host[3] = torch.tensor(layout.kv_lens)
        traced = router_out is not None
        key = (tuple(rows), cache.k.data_ptr(), cache.v.data_ptr(), cache.slots, traced, self.model.experts_per_token)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._capture(cache, rows, host, traced)
            self._graphs[key] = cap
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
            cap.inputs.copy_(host, non_blocking=True)
            cap.graph.replay()
        if router_out is not None:
            router_out.extend(cap.routing)
        return cap.logits

    @property
    def captured(self) -> int:
        """Graphs held now (the check script reports it to show the graph path ran)."""
        return len(self._graphs)

    def _pinned_for(self, B: int) -> torch.Tensor:
        # One staging buffer per batch size; reusing it is safe because the copy that reads it is queued
        # before the next step's host code can run past the caller's read of the sampled token.
        buf = self._pinned.get(B)
        if buf is None:
            buf = torch.empty(4, B, dtype=torch.long).pin_memory()
            self._pinned[B] = buf
        return buf

    def _capture(self, cache: RollingCache, rows: list[int], host: torch.Tensor, traced: bool) -> _Captured:
        inputs = host.to(cache.device)
        row_idx = None if rows == list(range(cache.batch)) else torch.tensor(rows, device=cache.device)
        # Warm-up runs on a side stream (cuBLAS and the allocator settle there), then capture. The warm-up
        # writes this step's own K/V into this step's own slots, which the replay below writes again.
        stream = torch.cuda.Stream(cache.device)
        stream.wait_stream(torch.cuda.current_stream(cache.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(cache, row_idx, inputs, [] if traced else None)
        torch.cuda.current_stream(cache.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        routing: list[Routing] = []
        with torch.cuda.graph(graph):
            logits = self._step(cache, row_idx, inputs, routing if traced else None)
        graph.replay()
        return _Captured(graph, inputs, logits, routing)
