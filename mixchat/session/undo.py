"""The undo log: for each recent turn, the cache slots it overwrote, so going back a turn is a copy (semantics 10).

Why: once a window buffer has wrapped, the slots a turn wrote held older tokens that are gone from the
cache; without them, going back one turn means pre-filling the whole remaining conversation again. Each
turn therefore saves, before it runs, the slots it may overwrite (`RollingCache.undo_point`, for an upper
bound: its pre-fill plus max tokens), and keeps after it ends only those it really overwrote
(`RollingCache.trim`): at most that turn's tokens per layer, at most the window. Restoring them and the
cache position gives back exactly the cache before the turn, so the persistent-cache invariant holds after
an undo as after a turn.

The log is bounded (the last `limit` turns) and is only valid as a chain ending at the current state: each
record says the cache position and conversation lengths before and after its turn, and is used only when
its "after" matches the conversation now. Anything else that changes the cache (a rebuild, an eager
pre-fill) clears it. Beyond the log, going back falls back to a pre-fill from the transcript's ids.

On disk the log is `undo-<n>.safetensors` next to `cache-<n>.safetensors`: raw tensors and a JSON header,
no pickle, bound to that cache file by its checksum, with a checksum of its own. A log file that fails any
check is ignored (undo then pre-fills); it can never make a conversation unreadable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mixchat.cache import RollingCache, SavedSlots, UndoPoint
from mixchat.session.cachefile import CacheProblem, CacheRecord, tensor_sha256
from mixchat.session.files import atomic_write

DEFAULT_UNDO_TURNS = 8
UNDO_FORMAT = "mixchat-undo-log"
UNDO_FORMAT_VERSION = 2  # 2: slots saved per group of layers that share a buffer size
UNDO_FILE = re.compile(r"^undo-(\d{1,12})\.safetensors$")


@dataclass
class TurnRecord:
    """One turn's way back: the slots it overwrote (in `point`) and the conversation's lengths around it."""

    point: UndoPoint  # cache position before the turn and the old contents of the slots it overwrote
    seen_after: int  # cache position after the turn
    ids_before: int
    ids_after: int
    messages_before: int
    messages_after: int

    @property
    def slots(self) -> int:
        return self.point.slots

    def header(self) -> dict[str, Any]:
        return {
            "seen_before": self.point.seen, "seen_after": self.seen_after,
            "saved": [[s.group, s.first, int(s.idx.numel())] for s in self.point.saved],
            "ids_before": self.ids_before, "ids_after": self.ids_after,
            "messages_before": self.messages_before, "messages_after": self.messages_after,
        }  # fmt: skip


@dataclass
class UndoLog:
    """The last `limit` turns' records, oldest first. Records are never changed in place once pushed."""

    limit: int = DEFAULT_UNDO_TURNS
    records: list[TurnRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def push(self, record: TurnRecord) -> None:
        self.records.append(record)
        del self.records[: max(0, len(self.records) - self.limit)]

    def clear(self) -> None:
        self.records.clear()

    def top(self, seen: int, n_ids: int, n_messages: int) -> TurnRecord | None:
        """The newest record if it leads to exactly this state (cache position, ids, messages), else None."""
        if not self.records:
            return None
        r = self.records[-1]
        if (r.seen_after, r.ids_after, r.messages_after) != (seen, n_ids, n_messages):
            return None
        return r

    def pop(self) -> TurnRecord:
        return self.records.pop()

    def copy(self) -> UndoLog:
        """A log of the same records (shared: they are read, never written, so two logs may hold them)."""
        return UndoLog(self.limit, list(self.records))

    @property
    def nbytes(self) -> int:
        total = 0
        for r in self.records:
            for s in r.point.saved:
                total += (s.k.numel() + s.v.numel()) * s.k.element_size()
        return total


def undo_file_for(cache_file: str) -> str:
    """`cache-7.safetensors` -> `undo-7.safetensors`: a log belongs to the cache file saved with it."""
    return "undo-" + cache_file[len("cache-") :]


def write_undo(path: Path, log: UndoLog, cache_record: CacheRecord) -> bool:
    """Atomically write the log next to the cache file of `cache_record`; False (and nothing written) if empty.

    Only records that chain back from the saved cache position are written: a record is worth keeping only
    if every newer one is kept too.
    """
    records = _chain(log.records, cache_record.seen)
    if not records:
        return False
    tensors: dict[str, torch.Tensor] = {}
    for i, r in enumerate(records):
        for s in r.point.saved:
            tensors[f"idx.{i}.{s.group}"] = s.idx.detach().to("cpu", torch.int64).contiguous()
            tensors[f"k.{i}.{s.group}"] = s.k.detach().to("cpu").contiguous()
            tensors[f"v.{i}.{s.group}"] = s.v.detach().to("cpu").contiguous()
    names = sorted(tensors)
    meta = {
        "format": UNDO_FORMAT,
        "format_version": str(UNDO_FORMAT_VERSION),
        "cache_sha256": cache_record.sha256,  # the exact cache state this log leads back from
        "fingerprint": cache_record.fingerprint,
        "limit": str(log.limit),
        "records": json.dumps([r.header() for r in records]),
        "sha256": tensor_sha256(*(tensors[n] for n in names)) if names else hashlib.sha256().hexdigest(),
    }
    if not tensors:  # safetensors wants at least one tensor; an all-fresh-slot log still records positions
        tensors["empty"] = torch.zeros(1)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)

    atomic_write(path, write)
    return True


def read_undo(path: Path, cache_record: CacheRecord, cache: RollingCache, n_ids: int, n_messages: int) -> UndoLog:
    """The log saved next to a cache that was just restored; raises CacheProblem (one line) if unusable."""
    if not path.is_file():
        raise CacheProblem("no undo log was saved")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != UNDO_FORMAT:
                raise CacheProblem("its undo log is not a mixchat undo log")
            if int(meta.get("format_version", "0")) != UNDO_FORMAT_VERSION:
                raise CacheProblem("its undo log is from another version of mixchat")
            if meta.get("cache_sha256") != cache_record.sha256 or meta.get("fingerprint") != cache_record.fingerprint:
                raise CacheProblem("its undo log belongs to another cache")
            headers = json.loads(meta.get("records", "[]"))
            tensors = {name: f.get_tensor(name) for name in f.keys() if name != "empty"}  # noqa: SIM118 (a safe_open handle)
            limit = int(meta.get("limit", str(DEFAULT_UNDO_TURNS)))
    except CacheProblem:
        raise
    except Exception as e:  # truncated or garbled file, malformed JSON or numbers
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CacheProblem(f"its undo log is truncated or damaged ({reason})") from None
    names = sorted(tensors)
    digest = tensor_sha256(*(tensors[n] for n in names)) if names else hashlib.sha256().hexdigest()
    if digest != meta.get("sha256"):
        raise CacheProblem("its undo log fails its checksum")
    records = [_record(i, h, tensors, cache) for i, h in enumerate(_headers(headers))]
    _check_chain(records, cache_record.seen, n_ids, n_messages)
    return UndoLog(max(1, limit), records)


def _headers(raw: Any) -> list[dict[str, Any]]:
    keys = ("seen_before", "seen_after", "ids_before", "ids_after", "messages_before", "messages_after")
    if not isinstance(raw, list):
        raise CacheProblem("its undo log's records are malformed")
    out = []
    for h in raw:
        if not isinstance(h, dict) or not all(isinstance(h.get(k), int) and h[k] >= 0 for k in keys):
            raise CacheProblem("its undo log's records are malformed")
        saved = h.get("saved")
        if not isinstance(saved, list) or not all(
            isinstance(e, list) and len(e) == 3 and all(isinstance(x, int) and x >= 0 for x in e) for e in saved
        ):
            raise CacheProblem("its undo log's records are malformed")
        out.append({**{k: int(h[k]) for k in keys}, "saved": [tuple(e) for e in saved]})
    return out


def _record(i: int, h: dict[str, Any], tensors: dict[str, torch.Tensor], cache: RollingCache) -> TurnRecord:
    """One record, its tensors checked against the header and the cache they will be copied into."""
    point = UndoPoint(0, h["seen_before"])
    for group, first, n in h["saved"]:
        if group >= len(cache.groups) or cache.groups[group].window is None or n == 0:
            raise CacheProblem(f"its undo log's record {i} names a buffer this cache does not have")
        g = cache.groups[group]
        try:
            idx, k, v = (tensors[f"{t}.{i}.{group}"] for t in ("idx", "k", "v"))
        except KeyError:
            raise CacheProblem(f"its undo log lacks the tensors of record {i}") from None
        a = cache.args
        want = (len(g.layers), n, a.n_kv_heads, a.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want or tuple(idx.shape) != (n,):
            raise CacheProblem(f"its undo log's record {i} has the wrong shape")
        if k.dtype != cache.dtype or v.dtype != cache.dtype or idx.dtype != torch.int64:
            raise CacheProblem(f"its undo log's record {i} has the wrong dtype")
        if idx.tolist() != [p % g.capacity for p in range(first, first + n)]:
            raise CacheProblem(f"its undo log's record {i} names the wrong slots")
        point.saved.append(SavedSlots(group, first, idx.to(cache.device), k.to(cache.device), v.to(cache.device)))
    return TurnRecord(
        point, h["seen_after"], h["ids_before"], h["ids_after"], h["messages_before"], h["messages_after"]
    )


def _check_chain(records: list[TurnRecord], seen: int, n_ids: int, n_messages: int) -> None:
    """Each record must lead to the next one's start, and the newest to the saved state."""
    for r in records:
        if not (
            r.point.seen <= r.seen_after
            and r.ids_before <= r.ids_after
            and r.point.seen <= r.ids_before
            and r.messages_before + 2 == r.messages_after
        ):
            raise CacheProblem("its undo log's records are inconsistent")
    for older, newer in itertools.pairwise(records):
        if (older.seen_after, older.ids_after, older.messages_after) != (
            newer.point.seen,
            newer.ids_before,
            newer.messages_before,
        ):
            raise CacheProblem("its undo log's records do not follow each other")
    if records and (records[-1].seen_after, records[-1].ids_after, records[-1].messages_after) != (
        seen,
        n_ids,
        n_messages,
    ):
        raise CacheProblem("its undo log does not end at the saved conversation")


def _chain(records: list[TurnRecord], seen: int) -> list[TurnRecord]:
    """The newest records that follow each other back from cache position `seen`."""
    out: list[TurnRecord] = []
    for r in reversed(records):
        if r.seen_after != seen:
            break
        out.append(r)
        seen = r.point.seen
    return out[::-1]
