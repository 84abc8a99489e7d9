"""Rolling-buffer KV cache, kept outside the model (semantics 2).

Each sequence ("row") owns C slots per layer. The token at absolute position p lives in slot p % C, with its
key stored after RoPE: rotation already encodes where the token sits, so decode can attend over the slots in
whatever order the wrap left them. For a sliding-window model C = W, so memory stops growing once a
conversation passes W tokens. A full-attention model gets C = its maximum context; its buffer grows on
demand up to C (slots never wrap there, so growing never moves a token), and going past C is an error.

The cache also plans each forward pass (`plan`): positions, which slots to write, and which cached slots a
pre-fill chunk must read back in time order. The plan is shared by all layers of the pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixchat.model.args import ModelArgs
from mixchat.model.layout import BatchLayout

_INITIAL_GROWABLE_SLOTS = 256


class ContextFullError(RuntimeError):
    """A full-attention sequence would run past the cache's maximum context."""


@dataclass
class RowSnapshot:
    """The live part of one row, in time order: enough to restore it exactly."""

    k: torch.Tensor  # [L, live, Hkv, D]
    v: torch.Tensor
    seen: int


@dataclass
class UndoPoint:
    """What a row's pre-fill of n tokens may overwrite, saved so that an abandoned pre-fill can be undone.

    A pre-fill of n tokens writes the slots of positions seen..seen+n-1; in a wrapped window buffer those
    slots hold live older tokens. Only those (at most min(n, C)) are copied, not the whole row: for a big
    cache a full snapshot on every turn would cost more than the turn itself.
    """

    row: int
    seen: int
    idx: torch.Tensor | None = None  # slots saved, those of positions first, first + 1, ... in that order
    k: torch.Tensor | None = None  # [L, len(idx), Hkv, D]
    v: torch.Tensor | None = None
    first: int = 0  # the position whose write overwrites idx[0]


class RollingCache:
    keeps_undo_log = True  # its undo points hold every layer (a pipeline stage's cache holds only its own)

    def __init__(
        self,
        args: ModelArgs,
        batch: int,
        device: torch.device | str,
        dtype: torch.dtype,
        layers: range | None = None,
        max_context: int | None = None,
    ) -> None:
        self.args = args
        self.layers = layers if layers is not None else range(args.n_layers)
        self.window = args.sliding_window
        if self.window is not None:
            self.capacity = self.window
        else:
            self.capacity = max_context or args.max_context
        self.batch = batch
        self.device = torch.device(device)
        self.dtype = dtype
        self.seen = [0] * batch
        slots = self.capacity if self.window is not None else min(self.capacity, _INITIAL_GROWABLE_SLOTS)
        self.k, self.v = self._alloc(slots)
        self._views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._views_of: torch.Tensor | None = None

    # ---- storage ----------------------------------------------------------------------------------
    def _alloc(self, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.layers), self.batch, slots, self.args.n_kv_heads, self.args.head_dim)
        return (
            torch.zeros(shape, device=self.device, dtype=self.dtype),
            torch.zeros(shape, device=self.device, dtype=self.dtype),
        )

    @property
    def slots(self) -> int:
        """Slots allocated per row (equals capacity except for a still-growing full-attention cache)."""
        return int(self.k.shape[2])

    def _ensure_slots(self, needed: int) -> None:
        if needed <= self.slots:
            return
        new = self.slots
        while new < needed:
            new *= 2
        new = min(new, self.capacity)
        k, v = self._alloc(new)
        k[:, :, : self.slots] = self.k
        v[:, :, : self.slots] = self.v
        self.k, self.v = k, v

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def live(self, row: int = 0) -> int:
        """Tokens of this row that are still in the buffer."""
        return min(self.seen[row], self.capacity)

    def wraps(self, row: int = 0) -> int:
        """How many times writing has come back round to slot 0 after filling the buffer."""
        return max(0, self.seen[row] - 1) // self.capacity if self.window is not None else 0

    # ---- planning a pass --------------------------------------------------------------------------
    def plan(self, seqlens: Sequence[int], rows: Sequence[int] | None = None) -> BatchLayout:
        """Lay out a pass that feeds `seqlens[i]` new tokens to cache row `rows[i]`."""
        rows = list(range(len(seqlens))) if rows is None else list(rows)
        seqlens = list(seqlens)
        if len(rows) != len(seqlens) or len(set(rows)) != len(rows):
            raise ValueError("each sequence of a pass needs its own cache row")
        if any(n <= 0 for n in seqlens):
            raise ValueError("every sequence in a pass needs at least one token")
        C = self.capacity
        if self.window is None:
            for r, n in zip(rows, seqlens, strict=True):
                if self.seen[r] + n > C:
                    raise ContextFullError(
                        f"the conversation would need {self.seen[r] + n} tokens but the context is limited "
                        f"to {C}; start a new conversation or raise --max-context"
                    )
            self._ensure_slots(max(self.seen[r] + n for r, n in zip(rows, seqlens, strict=True)))
        S = self.slots
        if all(n == 1 for n in seqlens):
            return self._plan_decode(rows, S)

        positions: list[int] = []
        write_src: list[int] = []
        write_dst: list[int] = []
        gather_src: list[int] = []
        gather_dst: list[int] = []
        new_dst: list[int] = []
        kv_lens: list[int] = []
        tok = 0
        kv = 0
        for r, n in zip(rows, seqlens, strict=True):
            seen = self.seen[r]
            live = min(seen, C)
            positions.extend(range(seen, seen + n))
            keep = min(n, C)
            for j in range(n - keep, n):
                write_src.append(tok + j)
                write_dst.append(r * S + (seen + j) % C)
            for j, p in enumerate(range(seen - live, seen)):
                gather_src.append(r * S + p % C)
                gather_dst.append(kv + j)
            new_dst.extend(range(kv + live, kv + live + n))
            kv_lens.append(live + n)
            kv += live + n
            tok += n

        dev = self.device

        def t(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.long, device=dev)

        return BatchLayout(
            mode="prefill", seqlens=seqlens, kv_lens=kv_lens, window=self.window, device=dev, pos_list=positions,
            rows=t(rows), row_ids=rows, write_src=t(write_src), slot_list=write_dst, gather_src=t(gather_src),
            gather_dst=t(gather_dst), new_dst=t(new_dst),
        )  # fmt: skip

    def _plan_decode(self, rows: list[int], S: int) -> BatchLayout:
        """One new token per row: the hot path of generation, so nothing is built that decode may not read.

        Positions and slots stay Python lists (tensors are made on first use); every token is kept, so there
        is no write source; the rows tensor is only needed when the pass covers some rows, or reorders them.
        """
        C = self.capacity
        seen = [self.seen[r] for r in rows]
        all_rows = rows == list(range(self.batch))
        return BatchLayout(
            mode="decode", seqlens=[1] * len(rows), kv_lens=[min(p + 1, C) for p in seen], window=self.window,
            device=self.device, pos_list=seen, slot_list=[r * S + p % C for r, p in zip(rows, seen, strict=True)],
            rows=None if all_rows else torch.tensor(rows, dtype=torch.long, device=self.device), row_ids=rows,
            all_rows=all_rows, kv_padding=S,
        )  # fmt: skip

    def advance(self, layout: BatchLayout) -> None:
        """Record that the pass described by `layout` ran to completion."""
        assert layout.row_ids is not None
        for r, n in zip(layout.row_ids, layout.seqlens, strict=True):
            self.seen[r] += n

    # ---- the model's view (KVStore protocol) -------------------------------------------------------
    def _layer_views(self, li: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per layer: K, V buffers [B, S, Hkv, D] and their flat [B*S, Hkv, D] views, made once per buffer.

        A decode step of a small model is short enough that re-deriving four views per layer shows up.
        """
        if self._views_of is not self.k:
            self._views = []
            for i in range(self.k.shape[0]):
                kc, vc = self.k[i], self.v[i]
                self._views.append((kc, vc, kc.view(-1, *kc.shape[2:]), vc.view(-1, *vc.shape[2:])))
            self._views_of = self.k
        return self._views[li]

    def kv_for(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's K/V for `layer` and return what its queries attend over."""
        kc, vc, flat_k, flat_v = self._layer_views(layer - self.layers.start)
        assert layout.slot_list is not None
        if layout.mode == "decode":
            if len(layout.slot_list) == 1:  # one row: a slice assignment, no index tensor
                s = layout.slot_list[0]
                flat_k[s : s + 1] = k
                flat_v[s : s + 1] = v
            else:
                flat_k.index_copy_(0, layout.write_dst, k)
                flat_v.index_copy_(0, layout.write_dst, v)
            if layout.all_rows:
                return kc, vc
            assert layout.rows is not None
            return kc.index_select(0, layout.rows), vc.index_select(0, layout.rows)
        assert layout.gather_src is not None and layout.gather_dst is not None and layout.new_dst is not None
        assert layout.write_src is not None
        if layout.gather_src.numel() == 0:
            keys, values = k, v
        else:
            # Cached tokens (put back in time order) followed by the chunk, per sequence.
            shape = (layout.kv_total, *k.shape[1:])
            keys = k.new_empty(shape)
            values = v.new_empty(shape)
            keys.index_copy_(0, layout.gather_dst, flat_k.index_select(0, layout.gather_src))
            values.index_copy_(0, layout.gather_dst, flat_v.index_select(0, layout.gather_src))
            keys.index_copy_(0, layout.new_dst, k)
            values.index_copy_(0, layout.new_dst, v)
        # Written after reading: a chunk longer than the buffer would otherwise overwrite keys it needs.
        assert layout.write_dst is not None
        flat_k.index_copy_(0, layout.write_dst, k.index_select(0, layout.write_src))
        flat_v.index_copy_(0, layout.write_dst, v.index_select(0, layout.write_src))
        return keys, values

    # ---- rows as whole objects --------------------------------------------------------------------
    def time_order_slots(self, row: int) -> torch.Tensor:
        seen, live = self.seen[row], self.live(row)
        return torch.tensor([p % self.capacity for p in range(seen - live, seen)], dtype=torch.long)

    def snapshot(self, row: int = 0) -> RowSnapshot:
        """Copy of the row's live tokens in time order (independent of capacity and slot layout)."""
        idx = self.time_order_slots(row).to(self.device)
        return RowSnapshot(
            self.k[:, row].index_select(1, idx).clone(), self.v[:, row].index_select(1, idx).clone(), self.seen[row]
        )

    def restore(self, snap: RowSnapshot, row: int = 0) -> None:
        """Put a snapshot back; slots are recomputed from absolute positions, so any capacity >= live works."""
        live = snap.k.shape[1]
        if live > self.capacity:
            raise ValueError(f"snapshot holds {live} tokens but the cache has {self.capacity} slots")
        if snap.k.shape[0] != len(self.layers) or snap.k.shape[2:] != self.k.shape[3:]:
            raise ValueError("snapshot shape does not match this cache")
        if self.window is None:
            self._ensure_slots(snap.seen)
        self.seen[row] = snap.seen
        idx = self.time_order_slots(row).to(self.device)
        self.k[:, row].index_copy_(1, idx, snap.k.to(self.device, self.dtype))
        self.v[:, row].index_copy_(1, idx, snap.v.to(self.device, self.dtype))

    def reset(self, row: int = 0) -> None:
        self.seen[row] = 0

    def undo_point(self, row: int, n: int) -> UndoPoint:
        """Save what pre-filling `n` more tokens into `row` would overwrite (see UndoPoint)."""
        point = UndoPoint(row, self.seen[row])
        C = self.capacity
        if self.window is not None:  # full-attention buffers never wrap: slots past `seen` hold nothing
            point.first = max(point.seen, C)
            slots = [p % C for p in range(point.first, point.seen + min(n, C))]
            if slots:
                point.idx = torch.tensor(slots, dtype=torch.long, device=self.device)
                point.k = self.k[:, row].index_select(1, point.idx)
                point.v = self.v[:, row].index_select(1, point.idx)
        return point

    def trim(self, point: UndoPoint, seen_after: int) -> UndoPoint:
        """The part of `point` that a pass ending at `seen_after` tokens really overwrote.

        A turn's length is only known once it has ended (the reply stops when it stops), so its undo point is
        taken for an upper bound (pre-fill + max tokens) and trimmed afterwards: an undo log then holds at
        most the slots each turn actually overwrote. Slots whose first overwrite would have come at a
        position >= seen_after still hold what they held, so they need no copy.
        """
        if point.idx is None:
            return point
        keep = max(0, min(point.idx.numel(), seen_after - point.first))
        if keep == 0:
            return UndoPoint(point.row, point.seen, first=point.first)
        assert point.k is not None and point.v is not None
        return UndoPoint(point.row, point.seen, point.idx[:keep], point.k[:, :keep].clone(),
                         point.v[:, :keep].clone(), point.first)

    def rewind(self, row: int, seen: int) -> bool:
        """Go back to `seen` tokens without any saved slots, where that is exact; False where it is not.

        It is exact while no slot of the positions to keep has been overwritten: always for full attention
        (its buffer never wraps), and for a window buffer until it has wrapped (seen <= capacity).
        """
        if seen > self.seen[row] or not self.keeps_undo_log:
            return False
        if self.window is not None and self.seen[row] > self.capacity:
            return False
        self.seen[row] = seen
        return True

    def rollback(self, point: UndoPoint) -> None:
        """Put the row back as it was when `point` was taken."""
        self.seen[point.row] = point.seen
        if point.idx is not None:
            assert point.k is not None and point.v is not None
            self.k[:, point.row].index_copy_(1, point.idx, point.k)
            self.v[:, point.row].index_copy_(1, point.idx, point.v)
