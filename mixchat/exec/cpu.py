"""A lean inference executor for small models on the CPU.

On a model the size of the built-in one (dim 256, 8 layers) each matmul of a decode step takes a few
microseconds, and the step's time goes to everything around them: module calls, a dozen elementwise ops per
RoPE or RMSNorm, the grouped-MoE bookkeeping built for long chunks, mask and index tensors. This runner
executes the same model with as few ops as the maths allows:

- weights read together are fused and stored pre-transposed ([in, out]): one matmul for q, k and v, one
  for each expert's w1 and w3; `x @ W` on a row-major [in, out] matrix runs about twice as fast for a
  single token as `F.linear`'s transposed read;
- the RMSNorm weights are folded into the matrices that read the normalised activations;
- RoPE is one complex multiply on q and k together, the rotation computed once per pass;
- a decode step writes into preallocated buffers (`_DecodeBuffers`) and builds no masks or index tensors;
- residual adds ride on the matmuls (`addmm`); the MoE of a few tokens goes straight to their chosen
  experts, longer passes group tokens by expert;
- when the caller only needs the last tokens' logits, the last layer computes queries, attention and the
  feed-forward block for those tokens only (every token's K/V is still cached).

The derived weights are a copy, so the runner only takes small models (`suits`), and they are rebuilt when
a parameter changes (see `_refresh`). Training and the reference path use `Transformer.forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

from mixchat.exec.cpu_modules import PAIR_LIMIT
from mixchat.model.attention import KVStore
from mixchat.model.attn_ops import attend, attend_last
from mixchat.model.layers import FeedForward, MoeLayer, Routing, top_k_routing
from mixchat.model.layout import BatchLayout
from mixchat.model.rope import apply_rotary
from mixchat.model.transformer import Transformer, TransformerBlock

MAX_PARAMS = 64_000_000  # the derived copy costs up to 256 MiB in float32
ROTATION_TABLE_LIMIT = 1 << 16  # decode positions below this read their RoPE rotation from a table


@dataclass
class _LayerWeights:
    """One layer's weights in the runner's layout (all [in, out], norm weights folded in)."""

    wqkv: torch.Tensor  # [dim, (H + 2 Hkv) * hd]
    wo: torch.Tensor  # [H * hd, dim]
    gate: torch.Tensor | None  # [dim, E] (MoE only)
    w13: torch.Tensor  # [E, dim, 2 * hidden] (a dense FFN: E = 1)
    w2: torch.Tensor  # [E, hidden, dim]
    moe: MoeLayer | None  # the module, read for its current top-k
    layer_id: int  # global layer index (cache row of this layer)
    w13s: list[torch.Tensor]  # per expert views of w13 / w2: a list index is cheaper than a tensor select
    w2s: list[torch.Tensor]


class _DecodeBuffers:
    """Scratch tensors of a decode step with B rows and their views, made once: every layer writes into the
    same tensors (each is consumed, or copied into the cache, before the next layer overwrites it)."""

    def __init__(self, B: int, dim: int, H: int, Hkv: int, hd: int, hidden: int) -> None:
        nqk = (H + Hkv) * hd
        self.xn = torch.empty(B, dim)  # normalised input
        self.qkv = torch.empty(B, nqk + Hkv * hd)
        self.qk = torch.view_as_complex(self.qkv[:, :nqk].view(B, H + Hkv, hd // 2, 2))  # [B, H + Hkv, hd/2]
        self.rotated = torch.empty(B, H + Hkv, hd // 2, dtype=torch.complex64)
        real = torch.view_as_real(self.rotated).view(B, H + Hkv, hd)
        self.q = real[:, :H]  # [B, H, hd]
        self.k = real[:, H:]  # [B, Hkv, hd]
        self.v = self.qkv[:, nqk:].view(B, Hkv, hd)
        self.h13 = torch.empty(1, 2 * hidden)  # one (token, expert) pair's w1 | w3 outputs
        self.h1, self.h3 = self.h13[:, :hidden], self.h13[:, hidden:]


class CpuRunner:
    """Runs `Transformer` inference passes on the CPU with fused, pre-transposed weights."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        args = model.args
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.hidden = args.hidden_dim
        self._eps = torch.tensor(args.norm_eps, dtype=torch.float32)  # a tensor, for addcmul
        self._layers: list[_LayerWeights] = []
        self._params: list[torch.nn.Parameter] = []
        self._versions: list[int] = []
        self._pointers: list[int] = []
        self._buffers: dict[int, _DecodeBuffers] = {}

    @staticmethod
    def suits(model: Transformer) -> bool:
        """Small float32 models on the CPU, where per-op overhead dominates and a weight copy is cheap."""
        if not isinstance(model, Transformer):
            return False  # pipeline stages and other wrappers hold only part of the weights
        total, _ = model.args.param_counts()
        return model.device.type == "cpu" and model.dtype == torch.float32 and total <= MAX_PARAMS

    def usable(self) -> bool:
        """Still on the CPU in float32 (the model may have been moved since the runner was made)."""
        w = self.model.tok_embeddings.weight
        return w.device.type == "cpu" and w.dtype == torch.float32

    def _refresh(self, full: bool) -> None:
        """Rebuild the derived weights if a parameter changed since they were made.

        Every pass compares version counters (bumped by any in-place update: optimiser steps,
        `load_state_dict`); `full` passes (pre-fill) also compare the parameter objects and their storage,
        which catches `assign=True` loads and `.data` swaps, at a cost a decode step should not pay.
        """
        if self._layers and self._versions_now() == self._versions:
            if not full:
                return
            params = list(self.model.parameters())
            same = [id(p) for p in params] == [id(p) for p in self._params]  # the same objects, in order
            if same and [p.data_ptr() for p in params] == self._pointers:
                return
        self._build()

    def _versions_now(self) -> list[int]:
        return [p._version for p in self._params]

    @torch.no_grad()
    def _build(self) -> None:
        layers = []
        for block in self.model.layers:
            assert isinstance(block, TransformerBlock)
            at = block.attention
            an = block.attention_norm.weight[:, None]  # [dim, 1]: scales the rows of [in, out] weights
            fn = block.ffn_norm.weight[:, None]
            wqkv = torch.cat([at.wq.weight, at.wk.weight, at.wv.weight], 0).t() * an
            ff = block.feed_forward
            moe = ff if isinstance(ff, MoeLayer) else None
            ws: list[torch.Tensor]  # w1, w3, w2 as [E, out, in]
            if moe is not None:
                ws = [moe.w1, moe.w3, moe.w2]
            else:
                assert isinstance(ff, FeedForward)
                ws = [lin.weight[None] for lin in (ff.w1, ff.w3, ff.w2)]  # a dense FFN as one expert
            w13 = (torch.cat(ws[:2], 1).transpose(1, 2) * fn[None]).contiguous()  # [E, dim, 2 * hidden]
            w2 = ws[2].transpose(1, 2).contiguous()  # [E, hidden, dim]
            gate = None if moe is None else (moe.gate.weight.t() * fn).contiguous()
            layers.append(
                _LayerWeights(
                    wqkv.contiguous(), at.wo.weight.t().contiguous(), gate, w13, w2, moe, at.layer_id,
                    list(w13), list(w2),
                )
            )  # fmt: skip
        self._layers = layers
        self._params = list(self.model.parameters())
        self._pointers = [p.data_ptr() for p in self._params]
        self._versions = self._versions_now()

    def forward(
        self,
        tokens: torch.Tensor,  # [T]
        layout: BatchLayout,
        cache: KVStore | None = None,
        router_out: list[Routing] | None = None,
        routing_last_only: bool = False,
    ) -> torch.Tensor:  # [B, vocab]: each sequence's last-token logits
        """With `routing_last_only`, each layer's Routing holds the sequences' last tokens only ([B, k]); then,
        or without `router_out`, the last layer skips the other tokens."""
        m = self.model
        T, B = tokens.shape[0], len(layout.seqlens)
        self._refresh(full=T != B)
        last = None if T == B else layout.last_token_index()  # [B]
        trim = last is not None and (router_out is None or routing_last_only)
        x = F.embedding(tokens, m.tok_embeddings.weight)  # [T, dim]
        rot = self._rotation(layout)  # [T, 1, hd/2] complex
        decode = self._decode_buffers(B) if layout.mode == "decode" and cache is not None else None
        n = len(self._layers)
        for i, lw in enumerate(self._layers):
            layer_id = lw.layer_id
            lay = layout.for_layer(layer_id)  # its own window and slots (models with per-layer windows)
            trimmed = trim and i == n - 1  # the last layer, for the last tokens only: x becomes [B, dim]
            x = self._attention(x, lw, layer_id, rot, lay, cache, last if trimmed else None, decode)
            ffn_rows = last if routing_last_only and not trimmed else None
            x = self._feed_forward(x, lw, router_out, ffn_rows, decode)
        if last is not None and not trim:
            x = x.index_select(0, last)
        h = _rms_normalise(x, self._eps) * m.norm.weight
        return F.linear(h, m.output.weight)  # [B, vocab]

    def _rotation(self, layout: BatchLayout) -> torch.Tensor:  # [T, 1, hd/2] complex
        rotary = self.model.rotary
        pos = layout.pos_list
        if len(pos) == 1 and pos[0] < ROTATION_TABLE_LIMIT:
            p = pos[0]
            return rotary.table(layout.device, p + 1)[p : p + 1]
        return rotary.rotation(layout.positions)

    def _decode_buffers(self, B: int) -> _DecodeBuffers:
        if B not in self._buffers:
            a = self.model.args
            self._buffers[B] = _DecodeBuffers(B, a.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.hidden)
        return self._buffers[B]

    def _attention(
        self, x: torch.Tensor, lw: _LayerWeights, layer_id: int, rot: torch.Tensor, layout: BatchLayout,
        cache: KVStore | None, last: torch.Tensor | None = None, b: _DecodeBuffers | None = None,
    ) -> torch.Tensor:  # [T, dim], or [B, dim] with `last`  # fmt: skip
        """x + attention(norm(x)), the residual added by the output matmul. A decode step (`b`) runs one token
        per row through its preallocated buffers; with `last` ([B] token indices) the queries, attention and
        residual are computed for those tokens only, while every token's K/V still reaches the cache."""
        T = x.shape[0]
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        xn = torch.mul(x, _rms_scale(x, self._eps), out=None if b is None else b.xn)  # [T, dim]
        if b is not None:
            torch.mm(xn, lw.wqkv, out=b.qkv)  # [B, (H + 2 Hkv) * hd]
            torch.mul(b.qk, rot, out=b.rotated)  # RoPE on q and k together
            q, k, v = b.q, b.k, b.v
        else:
            nq = H if last is None else 0  # query heads computed for every token
            qkv = torch.mm(xn, lw.wqkv[:, (H - nq) * hd :])  # [T, (nq + 2 Hkv) * hd]
            qk = apply_rotary(qkv[:, : (nq + Hkv) * hd].view(T, nq + Hkv, hd), rot)  # [T, nq + Hkv, hd]
            q, k = qk[:, :nq], qk[:, nq:]
            v = qkv[:, (nq + Hkv) * hd :].view(T, Hkv, hd)
            if last is not None:
                xq = torch.mm(xn.index_select(0, last), lw.wqkv[:, : H * hd])  # [B, H * hd]
                q = apply_rotary(xq.view(-1, H, hd), rot.index_select(0, last))  # [B, H, hd]
                x = x.index_select(0, last)  # [B, dim]
        keys, values = (k, v) if cache is None else cache.kv_for(layer_id, k, v, layout)
        out = attend(q, keys, values, layout) if last is None else attend_last(q, keys, values, layout)
        return torch.addmm(x, out.reshape(x.shape[0], H * hd), lw.wo)

    def _feed_forward(
        self, x: torch.Tensor, lw: _LayerWeights, router_out: list[Routing] | None, routing_rows: torch.Tensor | None,
        b: _DecodeBuffers | None,
    ) -> torch.Tensor:  # [T, dim]  # fmt: skip
        """x + FFN(norm(x)), updating x in place (it is this pass's own residual tensor)."""
        xn = torch.mul(x, _rms_scale(x, self._eps), out=None if b is None else b.xn)
        if lw.moe is None:
            h = torch.mm(xn, lw.w13s[0])  # [T, 2 * hidden]
            return x.addmm_(_swiglu(h, self.hidden), lw.w2s[0])
        assert lw.gate is not None
        k = lw.moe.k
        logits = torch.mm(xn, lw.gate)  # [T, E]
        experts, weights = top_k_routing(logits, k)  # [T, k] each
        if router_out is not None:
            r = Routing(experts, weights, logits)
            router_out.append(r if routing_rows is None else Routing(*(t.index_select(0, routing_rows) for t in r)))
        if x.shape[0] * k <= PAIR_LIMIT:
            return self._experts_by_pair(x, xn, lw, experts, weights, b)
        return self._experts_grouped(x, xn, lw, experts, weights)

    def _experts_by_pair(
        self, x: torch.Tensor, xn: torch.Tensor, lw: _LayerWeights, experts: torch.Tensor, weights: torch.Tensor,
        b: _DecodeBuffers | None,
    ) -> torch.Tensor:  # fmt: skip
        """A few tokens: each (token, chosen expert) pair is one slice of the stacked weights, its output added
        onto the token's residual row by the w2 matmul (the routing weight as alpha)."""
        T = x.shape[0]
        for t, (es, ws) in enumerate(zip(experts.tolist(), weights.tolist(), strict=True)):
            xt, row = (xn, x) if T == 1 else (xn[t : t + 1], x[t : t + 1])  # [1, dim]
            for e, w in zip(es, ws, strict=True):
                if b is not None:
                    torch.mm(xt, lw.w13s[e], out=b.h13)  # [1, 2 * hidden]
                    act = F.silu(b.h1).mul_(b.h3)
                else:
                    act = _swiglu(torch.mm(xt, lw.w13s[e]), self.hidden)
                row.addmm_(act, lw.w2s[e], alpha=w)
        return x

    def _experts_grouped(
        self, x: torch.Tensor, xn: torch.Tensor, lw: _LayerWeights, experts: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Many tokens: the (token, expert) pairs sorted by expert, one matmul pair per expert that has tokens,
        into shared buffers (`out=`) so the SwiGLU runs once over all pairs. `index_add_` adds the weighted
        rows onto their tokens' residual rows: putting them back in token order instead (`index_copy_`) is
        single-threaded and about 4x slower on a 1 MiB chunk."""
        k = experts.shape[1]
        E = lw.w13.shape[0]
        flat = experts.reshape(-1)  # [T*k]
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E).tolist()
        token_of = order.div(k, rounding_mode="floor")  # token of each sorted pair
        xs = xn.index_select(0, token_of)  # [T*k, dim] grouped by expert
        n = xs.shape[0]
        hidden = self.hidden
        h = xs.new_empty(n, 2 * hidden)  # [T*k, w1 | w3]
        # (expert, first row, end row) of each expert that has pairs
        groups = [(e, end - c, end) for e, (c, end) in enumerate(zip(counts, accumulate(counts), strict=True)) if c]
        for e, a, b in groups:
            torch.mm(xs[a:b], lw.w13s[e], out=h[a:b])
        act = F.silu(h[:, :hidden], inplace=True).mul_(h[:, hidden:])  # [T*k, hidden], rows 2 * hidden apart
        ys = torch.empty_like(xs)
        for e, a, b in groups:
            torch.mm(act[a:b], lw.w2s[e], out=ys[a:b])
        ys.mul_(weights.reshape(-1).index_select(0, order)[:, None])
        return x.index_add_(0, token_of, ys)


def _rms_scale(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """[T, 1] 1 / sqrt(mean(x^2) + eps) in three ops (mean and eps folded into one addcmul)."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # [T, 1]
    return torch.addcmul(eps, n, n, value=1.0 / x.shape[-1]).rsqrt_()


def _rms_normalise(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) per row (the norm's weight lives in the next matmul)."""
    return x * _rms_scale(x, eps)


def _swiglu(h: torch.Tensor, hidden: int) -> torch.Tensor:
    """silu(h1) * h3 for h = [h1 | h3] ([n, 2 * hidden] -> [n, hidden])."""
    return F.silu(h[:, :hidden]).mul_(h[:, hidden:])
