"""Rolling-buffer KV cache, kept outside the model (semantics 2).

Each sequence ("row") owns C slots per layer. The token at absolute position p lives in slot p % C, with its
key stored after RoPE: rotation already encodes where the token sits, so decode can attend over the slots in
whatever order the wrap left them. For a sliding-window model C = W, so memory stops growing once a
conversation passes W tokens. A full-attention model gets C = its maximum context, and going past C is an
error. Either buffer starts small and grows on demand up to C: slots wrap only once a buffer holds all C, so
growing never moves a token (a 7B model's 4,096-slot window costs 0.5 GB that a short chat never uses).
A model whose layers have different windows (Ministral) gives each layer a buffer of its own size.

The cache also plans each forward pass (`plan`): positions, which slots to write, and which cached slots a
pre-fill chunk must read back in time order. The plan is shared by all layers of the pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mixchat.errors import ContextFullError as ContextFullError  # re-exported
from mixchat.model.args import ModelArgs
from mixchat.model.layout import BatchLayout

_INITIAL_GROWABLE_SLOTS = 256


@dataclass
class RowSnapshot:
    """The live part of one row, in time order: enough to restore it exactly."""

    k: torch.Tensor  # [L, live, Hkv, D]
    v: torch.Tensor
    seen: int


@dataclass
class SavedSlots:
    """One group's slots that a pre-fill may overwrite, with what they held."""

    group: int  # index into RollingCache.groups
    first: int  # the position whose write overwrites idx[0]; idx holds the slots of first, first + 1, ...
    idx: torch.Tensor  # [n] slots
    k: torch.Tensor  # [Lg, n, Hkv, D]
    v: torch.Tensor


@dataclass
class UndoPoint:
    """What a row's pre-fill of n tokens may overwrite, saved so that the pre-fill can be undone.

    A pre-fill of n tokens writes the slots of positions seen..seen+n-1; in a wrapped window buffer those
    slots hold live older tokens. Only those (at most min(n, C)) are copied, not the whole row: for a big
    cache a full snapshot on every turn would cost more than the turn itself. One entry per group of layers
    that share a buffer size (one group unless the model's layers have windows of different sizes); a
    full-attention group never wraps, so it has none.
    """

    row: int
    seen: int
    saved: list[SavedSlots] = field(default_factory=list)

    @property
    def slots(self) -> int:
        return sum(int(s.idx.numel()) for s in self.saved)


@dataclass
class _Group:
    """Layers that share a buffer size: the same window (or full attention), hence the same slot plan."""

    window: int | None
    capacity: int  # C: slots a row may use (the window, or the maximum context)
    layers: list[int]  # local layer indices (0 = the cache's first layer)
    k: torch.Tensor  # [Lg, B, S, Hkv, D]
    v: torch.Tensor

    @property
    def slots(self) -> int:
        return int(self.k.shape[2])


class RollingCache:
    """The KV cache of `batch` rows over the layers `layers` (all of the model's by default).

    Each layer has a rolling buffer of its own size: its window, or the maximum context for a
    full-attention layer. Layers of one size share one tensor (a group), so a model whose layers all have
    the same window has one group, and `k` / `v` are that group's [L, B, S, Hkv, D] tensors. A model with
    per-layer windows (Ministral) has several groups and no single `k` / `v`; each pass then carries one
    layout per group (`BatchLayout.for_layer`). `capacity`, `window`, `live` and `wraps` describe the
    largest layer (the one that bounds the conversation); `smallest_capacity` the smallest.
    """

    k: torch.Tensor  # [L, B, S, Hkv, D]: only when every layer has the same size (one group)
    v: torch.Tensor
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
        self.batch = batch
        self.device = torch.device(device)
        self.dtype = dtype
        self.seen = [0] * batch
        limit = max_context or args.max_context
        by_size: dict[int | None, list[int]] = {}
        for i, layer in enumerate(self.layers):
            by_size.setdefault(args.window_of(layer), []).append(i)
        self.groups: list[_Group] = []
        for window, members in by_size.items():
            capacity = window if window is not None else limit
            slots = min(capacity, _INITIAL_GROWABLE_SLOTS)
            k, v = self._alloc(len(members), slots)
            self.groups.append(_Group(window, capacity, members, k, v))
        self._group_of = [0] * len(self.layers)  # local layer -> (group, index in the group)
        self._index_in = [0] * len(self.layers)
        for g, group in enumerate(self.groups):
            for j, li in enumerate(group.layers):
                self._group_of[li], self._index_in[li] = g, j
        largest = max(self.groups, key=lambda grp: (grp.window is None, grp.capacity))
        self.capacity = largest.capacity
        self.window = largest.window  # None: some layer keeps everything, so the context is bounded
        self.smallest_capacity = min(grp.capacity for grp in self.groups)
        self._views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._storage = 0  # bumped whenever a group's buffers are (re)allocated
        self._views_of = -1  # the storage version the views were made for
        self._bind()

    # ---- storage ----------------------------------------------------------------------------------
    def _alloc(self, n_layers: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (n_layers, self.batch, slots, self.args.n_kv_heads, self.args.head_dim)
        return (
            torch.zeros(shape, device=self.device, dtype=self.dtype),
            torch.zeros(shape, device=self.device, dtype=self.dtype),
        )

    def _bind(self) -> None:
        """Point `k` / `v` at the single group's tensors (after allocation or growth)."""
        self._storage += 1
        if len(self.groups) == 1:
            self.k, self.v = self.groups[0].k, self.groups[0].v

    @property
    def uniform(self) -> bool:
        """Whether every layer has the same buffer size (then `k` / `v` hold the whole cache)."""
        return len(self.groups) == 1

    def layer_kv(self, li: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Local layer `li`'s K and V buffers, [B, S_layer, Hkv, D] each."""
        g = self.groups[self._group_of[li]]
        j = self._index_in[li]
        return g.k[j], g.v[j]

    @property
    def slots(self) -> int:
        """Slots allocated per row in the largest layer (equals capacity once the buffer has grown to it)."""
        return max(g.slots for g in self.groups)

    def _ensure_slots(self, needed: int) -> None:
        """Grow the buffers to hold `needed` tokens, or their capacity (a window buffer then rolls)."""
        grew = False
        for g in self.groups:
            if needed <= g.slots or g.slots == g.capacity:
                continue
            new = g.slots
            while new < needed:
                new *= 2
            new = min(new, g.capacity)
            # Grown during a forward (inference mode) but written later outside it (undo, restore): keep
            # the buffers ordinary tensors.
            with torch.inference_mode(False), torch.no_grad():
                k, v = self._alloc(len(g.layers), new)
                k[:, :, : g.slots] = g.k
                v[:, :, : g.slots] = g.v
            g.k, g.v = k, v
            grew = True
        if grew:
            self._bind()

    @property
    def nbytes(self) -> int:
        return sum(g.k.numel() * g.k.element_size() * 2 for g in self.groups)

    def live(self, row: int = 0) -> int:
        """Tokens of this row that are still in the largest layer's buffer."""
        return min(self.seen[row], self.capacity)

    def live_smallest(self, row: int = 0) -> int:
        """Tokens of this row still in the smallest layer's buffer."""
        return min(self.seen[row], self.smallest_capacity)

    def wraps(self, row: int = 0) -> int:
        """How many times writing has come back round to slot 0 after filling the buffer."""
        return max(0, self.seen[row] - 1) // self.capacity if self.window is not None else 0

    # ---- planning a pass --------------------------------------------------------------------------
    def plan(self, seqlens: Sequence[int], rows: Sequence[int] | None = None) -> BatchLayout:
        """Lay out a pass that feeds `seqlens[i]` new tokens to cache row `rows[i]`.

        With several groups, each gets its own layout (its slots, visible keys and window), reached by
        `layout.for_layer(layer)`; the returned layout is the first group's, carrying them all.
        """
        rows = list(range(len(seqlens))) if rows is None else list(rows)
        seqlens = list(seqlens)
        if len(rows) != len(seqlens) or len(set(rows)) != len(rows):
            raise ValueError("each sequence of a pass needs its own cache row")
        if any(n <= 0 for n in seqlens):
            raise ValueError("every sequence in a pass needs at least one token")
        self.check_room(rows, seqlens)
        self._ensure_slots(max(self.seen[r] + n for r, n in zip(rows, seqlens, strict=True)))
        layouts = [self._plan_group(g, rows, seqlens) for g in self.groups]
        if len(layouts) == 1:
            return layouts[0]
        per_layer = [layouts[0]] * self.args.n_layers
        for li, layer in enumerate(self.layers):
            per_layer[layer] = layouts[self._group_of[li]]
        for lay in layouts:
            lay.per_layer = per_layer
        return layouts[0]

    def _plan_group(self, g: _Group, rows: list[int], seqlens: list[int]) -> BatchLayout:
        C, S = g.capacity, g.slots
        if all(n == 1 for n in seqlens):
            return self._plan_decode(rows, S, C, g.window)

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
            mode="prefill", seqlens=seqlens, kv_lens=kv_lens, window=g.window, device=dev, pos_list=positions,
            rows=t(rows), row_ids=rows, write_src=t(write_src), slot_list=write_dst, gather_src=t(gather_src),
            gather_dst=t(gather_dst), new_dst=t(new_dst),
        )  # fmt: skip

    def _plan_decode(self, rows: list[int], S: int, C: int, window: int | None) -> BatchLayout:
        """One new token per row: the hot path of generation, so nothing is built that decode may not read.

        Positions and slots stay Python lists (tensors are made on first use); every token is kept, so there
        is no write source; the rows tensor is only needed when the pass covers some rows, or reorders them.
        """
        seen = [self.seen[r] for r in rows]
        all_rows = rows == list(range(self.batch))
        return BatchLayout(
            mode="decode", seqlens=[1] * len(rows), kv_lens=[min(p + 1, C) for p in seen], window=window,
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
        if self._views_of != self._storage:
            self._views = []
            for i in range(len(self.layers)):
                kc, vc = self.layer_kv(i)
                self._views.append((kc, vc, kc.view(-1, *kc.shape[2:]), vc.view(-1, *vc.shape[2:])))
            self._views_of = self._storage
        return self._views[li]

    def check_room(self, rows: Sequence[int], counts: Sequence[int]) -> None:
        """Raise ContextFullError unless each row can take `counts[i]` more tokens. A windowed buffer always
        can (it rolls); a full-attention one stops at its capacity. The engine asks before a pre-fill's first
        pass, so an overflow never leaves half a turn in the cache."""
        if self.window is not None:
            return
        for r, n in zip(rows, counts, strict=True):
            if self.seen[r] + n > self.capacity:
                raise ContextFullError(
                    f"the conversation would need {self.seen[r] + n} tokens but the context is limited "
                    f"to {self.capacity}; start a new conversation or raise --max-context"
                )

    def kv_for(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, layout: BatchLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's K/V for `layer` and return what its queries attend over.

        `layout` is this layer's own (`BatchLayout.for_layer`): its slots index this layer's buffer.
        """
        kc, vc, flat_k, flat_v = self._layer_views(layer - self.layers.start)
        assert layout.slot_list is not None
        if layout.mode == "decode":
            if len(layout.slot_list) == 1 and layout.device_live is None:  # one host row: a slice, no index
                s = layout.slot_list[0]
                flat_k[s : s + 1] = k
                flat_v[s : s + 1] = v
            else:
                assert layout.write_dst is not None
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
    def time_order_slots(self, row: int, capacity: int | None = None) -> torch.Tensor:
        """Slots of the row's live tokens, oldest first, in a buffer of `capacity` (default: the largest)."""
        C = capacity if capacity is not None else self.capacity
        seen = self.seen[row]
        live = min(seen, C)
        return torch.tensor([p % C for p in range(seen - live, seen)], dtype=torch.long)

    def snapshot(self, row: int = 0) -> RowSnapshot:
        """Copy of the row's live tokens in time order (independent of capacity and slot layout).

        [L, live, Hkv, D] with `live` the largest layer's count; a layer with a smaller buffer holds only its
        last tokens, so its rows are right-aligned and the older positions it no longer has are zeros.
        """
        live = self.live(row)
        if self.uniform:
            idx = self.time_order_slots(row).to(self.device)
            return RowSnapshot(
                self.k[:, row].index_select(1, idx).clone(), self.v[:, row].index_select(1, idx).clone(), self.seen[row]
            )
        shape = (len(self.layers), live, self.args.n_kv_heads, self.args.head_dim)
        k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        for g in self.groups:
            idx = self.time_order_slots(row, g.capacity).to(self.device)
            n = idx.numel()
            layers = torch.tensor(g.layers, device=self.device)
            k[:, live - n :].index_copy_(0, layers, g.k[:, row].index_select(1, idx))
            v[:, live - n :].index_copy_(0, layers, g.v[:, row].index_select(1, idx))
        return RowSnapshot(k, v, self.seen[row])

    def restore(self, snap: RowSnapshot, row: int = 0) -> None:
        """Put a snapshot back; slots are recomputed from absolute positions, so any capacity >= live works."""
        live = snap.k.shape[1]
        if live > self.capacity:
            raise ValueError(f"snapshot holds {live} tokens but the cache has {self.capacity} slots")
        if snap.k.shape[0] != len(self.layers) or tuple(snap.k.shape[2:]) != (self.args.n_kv_heads, self.args.head_dim):
            raise ValueError("snapshot shape does not match this cache")
        if live != min(snap.seen, self.capacity):
            expected = min(snap.seen, self.capacity)
            raise ValueError(f"snapshot holds {live} tokens, but {snap.seen} seen means {expected} here")
        self._ensure_slots(snap.seen)
        self.seen[row] = snap.seen
        for g in self.groups:
            idx = self.time_order_slots(row, g.capacity).to(self.device)
            n = idx.numel()
            layers = torch.tensor(g.layers, device=snap.k.device)
            sk = snap.k.index_select(0, layers)[:, live - n :].to(self.device, self.dtype)
            sv = snap.v.index_select(0, layers)[:, live - n :].to(self.device, self.dtype)
            g.k[:, row].index_copy_(1, idx, sk)
            g.v[:, row].index_copy_(1, idx, sv)

    def reset(self, row: int = 0) -> None:
        self.seen[row] = 0

    def undo_point(self, row: int, n: int) -> UndoPoint:
        """Save what pre-filling `n` more tokens into `row` would overwrite (see UndoPoint)."""
        point = UndoPoint(row, self.seen[row])
        for gi, g in enumerate(self.groups):
            if g.window is None:  # full-attention buffers never wrap: slots past `seen` hold nothing
                continue
            C = g.capacity
            first = max(point.seen, C)
            # a buffer still growing holds nothing past its slots yet (the pass will grow it): nothing to save
            slots = [p % C for p in range(first, point.seen + min(n, C))]
            if slots:
                idx = torch.tensor(slots, dtype=torch.long, device=self.device)
                k, v = g.k[:, row].index_select(1, idx), g.v[:, row].index_select(1, idx)
                point.saved.append(SavedSlots(gi, first, idx, k, v))
        return point

    def trim(self, point: UndoPoint, seen_after: int) -> UndoPoint:
        """The part of `point` that a pass ending at `seen_after` tokens really overwrote.

        A turn's length is only known once it has ended (the reply stops when it stops), so its undo point is
        taken for an upper bound (pre-fill + max tokens) and trimmed afterwards: an undo log then holds at
        most the slots each turn actually overwrote. Slots whose first overwrite would have come at a
        position >= seen_after still hold what they held, so they need no copy.
        """
        kept = []
        for s in point.saved:
            keep = max(0, min(int(s.idx.numel()), seen_after - s.first))
            if keep:
                kept.append(SavedSlots(s.group, s.first, s.idx[:keep], s.k[:, :keep].clone(), s.v[:, :keep].clone()))
        return UndoPoint(point.row, point.seen, kept)

    def rewind(self, row: int, seen: int) -> bool:
        """Go back to `seen` tokens without any saved slots, where that is exact; False where it is not.

        It is exact while no slot of the positions to keep has been overwritten: always for full attention
        (its buffer never wraps), and for a window buffer until it has wrapped (seen <= its capacity).
        """
        if seen > self.seen[row] or not self.keeps_undo_log:
            return False
        if any(g.window is not None and self.seen[row] > g.capacity for g in self.groups):
            return False
        self.seen[row] = seen
        return True

    def rollback(self, point: UndoPoint) -> None:
        """Put the row back as it was when `point` was taken."""
        self.seen[point.row] = point.seen
        for s in point.saved:
            g = self.groups[s.group]
            g.k[:, point.row].index_copy_(1, s.idx, s.k)
            g.v[:, point.row].index_copy_(1, s.idx, s.v)
