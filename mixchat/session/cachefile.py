"""A conversation's KV cache on disk: safetensors, live slots only, with everything needed to trust it.

Only the live tokens are written, in time order ([L, live, Hkv, D] for K and for V, as RollingCache.snapshot
gives them), so the file stays bounded by the window however long the conversation is, and it can be put
back into a buffer of any capacity. The metadata says which model made it (fingerprint digest), how many
tokens it has seen, its dtype and a sha256 of the tensor bytes; the transcript records the same checksum,
so a cache file that does not belong to its transcript is noticed too.

Reading checks everything before anything touches the live cache; any failure is a CacheProblem with a
one-line reason, and the caller rebuilds from the transcript's ids. Nothing here can run code from a file:
safetensors holds raw tensors and a JSON header, no pickle.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mixchat.cache import RollingCache, RowSnapshot
from mixchat.session.files import atomic_write
from mixchat.session.fingerprint import ModelFingerprint

CACHE_FORMAT = "mixchat-kv-cache"
CACHE_FORMAT_VERSION = 1
CACHE_FILE = re.compile(r"^cache-(\d{1,12})\.safetensors$")
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class CacheProblem(Exception):
    """Why a saved cache cannot be used (one line, lower case, no trailing period)."""


@dataclass
class CacheRecord:
    """What the transcript says about its cache file."""

    file: str
    seen: int
    live: int
    dtype: str
    sha256: str
    fingerprint: str  # ModelFingerprint.digest of the model that made it

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: Any) -> CacheRecord:
        """Raises CacheProblem for a malformed record (the transcript itself stays usable)."""
        try:
            rec = cls(
                str(d["file"]), int(d["seen"]), int(d["live"]), str(d["dtype"]), str(d["sha256"]), str(d["fingerprint"])
            )
        except (KeyError, TypeError, ValueError):
            raise CacheProblem("the transcript's cache record is malformed") from None
        if not CACHE_FILE.match(rec.file):  # never follow a path a hand-edited transcript might put here
            raise CacheProblem(f"the transcript names an invalid cache file {rec.file!r}")
        return rec


def cache_file_name(number: int) -> str:
    return f"cache-{number}.safetensors"


def tensor_sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_cache(path: Path, cache: RollingCache, fingerprint: ModelFingerprint) -> CacheRecord:
    """Atomically write the live part of row 0 of `cache` to `path`."""
    snap = cache.snapshot(0)
    k = snap.k.detach().to("cpu").contiguous()
    v = snap.v.detach().to("cpu").contiguous()
    digest = tensor_sha256(k, v)
    dtype = DTYPE_NAMES.get(k.dtype, str(k.dtype))
    meta = {
        "format": CACHE_FORMAT,
        "format_version": str(CACHE_FORMAT_VERSION),
        "seen": str(snap.seen),
        "dtype": dtype,
        "sha256": digest,
        "fingerprint": fingerprint.digest,
    }

    def write(tmp: Path) -> None:
        try:
            save_file({"k": k, "v": v}, str(tmp), metadata=meta)
        except SafetensorError as e:  # its I/O errors (a full disk) are not OSErrors; the caller expects one
            raise as_os_error(e) from None

    atomic_write(path, write)
    return CacheRecord(path.name, snap.seen, int(k.shape[1]), dtype, digest, fingerprint.digest)


def as_os_error(e: Exception) -> OSError:
    """safetensors reports an OS error as text ("... Os { code: 28, ... }"): the OSError it stands for."""
    m = re.search(r"(?:code: |os error )(\d+)", str(e))
    if m:
        code = int(m[1])
        return OSError(code, os.strerror(code))
    return OSError(str(e).splitlines()[0][:160] if str(e) else type(e).__name__)


def read_cache(path: Path, record: CacheRecord, fingerprint: ModelFingerprint, cache: RollingCache, n_ids: int) -> None:
    """Check the cache file against the record, the model and the transcript; restore it into row 0.

    Raises CacheProblem (and leaves `cache` untouched) if anything is off.
    """
    if not path.is_file():
        raise CacheProblem(f"its cache file {path.name} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            _check_meta(meta, record, fingerprint, cache, n_ids)
            names = set(f.keys())
            if names != {"k", "v"}:
                raise CacheProblem(f"its cache file holds tensors {sorted(names)}, expected k and v")
            k = f.get_tensor("k")
            v = f.get_tensor("v")
    except CacheProblem:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CacheProblem(f"its cache file is truncated or damaged ({reason})") from None

    a = cache.args
    want = (a.n_layers, min(record.seen, cache.capacity), a.n_kv_heads, a.head_dim)
    for name, t in (("k", k), ("v", v)):
        if tuple(t.shape) != want:
            raise CacheProblem(f"its cache tensor {name} has shape {list(t.shape)}, expected {list(want)}")
        if t.dtype != cache.dtype:
            raise CacheProblem(
                f"its cache is {DTYPE_NAMES.get(t.dtype, t.dtype)} but the model runs in "
                f"{DTYPE_NAMES.get(cache.dtype, cache.dtype)}"
            )
    digest = tensor_sha256(k, v)
    if digest != record.sha256 or digest != meta.get("sha256"):
        raise CacheProblem("its cache file fails its checksum (damaged, or not the cache of this transcript)")
    cache.restore(RowSnapshot(k, v, record.seen), 0)


def _check_meta(
    meta: dict[str, str], record: CacheRecord, fingerprint: ModelFingerprint, cache: RollingCache, n_ids: int
) -> None:
    if meta.get("format") != CACHE_FORMAT:
        raise CacheProblem("its cache file is not a mixchat cache")
    try:
        version = int(meta.get("format_version", ""))
        seen = int(meta.get("seen", ""))
    except ValueError:
        raise CacheProblem("its cache file has malformed metadata") from None
    if version > CACHE_FORMAT_VERSION:
        raise CacheProblem(
            f"its cache file has format {version}, newer than this mixchat reads ({CACHE_FORMAT_VERSION})"
        )
    if meta.get("fingerprint") != fingerprint.digest:
        raise CacheProblem("its cache was made by a different model")
    if meta.get("fingerprint") != record.fingerprint:
        raise CacheProblem("its cache file and transcript disagree about the model")
    if seen != record.seen:
        raise CacheProblem(f"its cache file holds {seen} tokens but the transcript expects {record.seen}")
    if not 0 < seen <= n_ids:
        raise CacheProblem(f"its cache has seen {seen} tokens but the conversation has {n_ids}")
    if cache.window is None and seen > cache.capacity:
        raise CacheProblem(f"its cache holds {seen} tokens, more than the context limit {cache.capacity}")
    if record.live != min(seen, cache.capacity):
        raise CacheProblem(f"its cache record lists {record.live} live tokens, expected {min(seen, cache.capacity)}")
