"""What model a saved cache belongs to.

A KV cache is only meaningful for the exact weights and tokenizer that produced it: attached to another
model it would not fail loudly, it would quietly produce wrong answers. So every saved conversation carries
a fingerprint, and a cache is only reused when the fingerprint matches the model that is loaded now.

The fingerprint has three parts: the architecture (params), a hash of the tokenizer file (small, read in
full) and a hash of the weights. Hashing every byte of a 90 GB Mixtral at start-up would cost a minute, so
the weights hash covers each safetensors file's name, size and header (every tensor's name, dtype, shape and
offsets) plus a few evenly spaced byte ranges of the data. Two checkpoints of one architecture differ in
essentially every byte, so any sample tells them apart; a file edited in a few unsampled bytes would not be
noticed, which is an accepted trade (the cache checksum still protects against damage to the cache itself).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixchat.model.args import ModelArgs

SAMPLES = 16  # byte ranges sampled per weight file
SAMPLE_BYTES = 64 * 1024
SMALL_FILE = SAMPLES * SAMPLE_BYTES * 4  # below this size a file is hashed in full

_file_cache: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class ModelFingerprint:
    architecture: dict[str, Any] = field(hash=False)  # params.json fields (no max_context: not a property of weights)
    tokenizer: str  # sha256 of the tokenizer file ("" when there is none)
    weights: str  # sha256 over headers and sampled bytes of the weight files
    # How the weights are held ("none", "int8", "int4-g128"): a cache computed by int4 weights is not the
    # cache of the same files at bf16. Left out of the JSON when "none", so older fingerprints still match.
    quantization: str = "none"

    @property
    def digest(self) -> str:
        """One string that changes when any part changes; stored in the cache file next to the tensors."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        out = {"architecture": self.architecture, "tokenizer": self.tokenizer, "weights": self.weights}
        if self.quantization != "none":
            out["quantization"] = self.quantization
        return out

    @classmethod
    def from_json(cls, d: Any) -> ModelFingerprint | None:
        """None for anything that is not a well-formed fingerprint (it then matches no model)."""
        if not isinstance(d, dict):
            return None
        arch, tok, weights = d.get("architecture"), d.get("tokenizer"), d.get("weights")
        quant = d.get("quantization", "none")
        if not isinstance(arch, dict) or not isinstance(tok, str) or not isinstance(weights, str):
            return None
        if not isinstance(quant, str):
            return None
        return cls(arch, tok, weights, quant)

    def difference(self, other: ModelFingerprint | None) -> str | None:
        """A short phrase naming what differs (None when the two match)."""
        if other is None:
            return "no model fingerprint"
        if self.architecture != other.architecture:
            return "a different architecture"
        if self.tokenizer != other.tokenizer:
            return "a different tokenizer"
        if self.quantization != other.quantization:
            return f"weights quantized as {other.quantization}, now {self.quantization}"
        if self.weights != other.weights:
            return "different weights"
        return None

    def same_tokenizer(self, other: ModelFingerprint | None) -> bool:
        return other is not None and self.tokenizer == other.tokenizer


def architecture_of(args: ModelArgs) -> dict[str, Any]:
    return json.loads(json.dumps(args.to_params_json()))  # plain JSON types, as it reads back from disk


def hash_file(path: Path) -> str:
    """sha256 of a whole (small) file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_weight_file(path: Path) -> str:
    """Name, size, safetensors header and sampled data ranges of one weight file (memoised per process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _file_cache:
        return _file_cache[key]
    h = hashlib.sha256()
    h.update(path.name.encode())
    h.update(struct.pack("<Q", st.st_size))
    with open(path, "rb") as f:
        if st.st_size <= SMALL_FILE:
            h.update(f.read())
        else:
            head = f.read(8)
            h.update(head)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            header_len = min(header_len, st.st_size - 8)
            h.update(f.read(header_len))
            start = 8 + header_len
            span = max(0, st.st_size - start - SAMPLE_BYTES)
            for i in range(SAMPLES + 1):  # evenly spaced, the last one ending at the end of the file
                f.seek(start + span * i // SAMPLES)
                h.update(f.read(SAMPLE_BYTES))
    digest = h.hexdigest()
    _file_cache[key] = digest
    return digest


def fingerprint_files(
    args: ModelArgs, weight_files: Iterable[Path], tokenizer_file: Path | None, quantization: str = "none"
) -> ModelFingerprint:
    """Fingerprint of a model folder on disk: fast, reads ~1 MiB per weight file."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in weight_files):
        h.update(hash_weight_file(path).encode())
    tok = hash_file(tokenizer_file) if tokenizer_file is not None else ""
    return ModelFingerprint(architecture_of(args), tok, h.hexdigest(), quantization)


def fingerprint_runtime(runtime: Any) -> ModelFingerprint:
    """Fingerprint of a loaded `mixchat.runtime.Runtime` (from its checkpoint files, not its memory)."""
    ckpt = runtime.checkpoint
    quant = getattr(runtime, "quant", None)
    return fingerprint_files(ckpt.args, ckpt.weight_files, ckpt.tokenizer_file, quant.label if quant else "none")


def fingerprint_model(model: torch.nn.Module, args: ModelArgs, tokenizer_file: Path | None = None) -> ModelFingerprint:
    """Fingerprint of an in-memory model with no files behind it (tests, freshly built models).

    Hashes every parameter byte, which is fine for the small models this is meant for.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = p.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    tok = hash_file(tokenizer_file) if tokenizer_file is not None else ""
    return ModelFingerprint(architecture_of(args), tok, "mem:" + h.hexdigest())
