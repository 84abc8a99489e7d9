"""Model hyper-parameters, read from Mistral-native `params.json` or Hugging Face `config.json`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A model configuration that cannot describe a Mistral-family model."""


@dataclass
class MoeArgs:
    num_experts: int = 8
    num_experts_per_tok: int = 2


@dataclass
class ModelArgs:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    moe: MoeArgs | None = None
    # Not part of the checkpoint: the cache bound for full-attention models (semantics 1).
    max_context: int = field(default=32768, compare=False)

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"'{name}' must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"'{name}' must be a finite number > 0, got {value!r}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            self.sliding_window = None
        if self.moe is not None and not 1 <= self.moe.num_experts_per_tok <= self.moe.num_experts:
            raise ConfigError("num_experts_per_tok must be between 1 and num_experts")

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def cache_capacity(self) -> int:
        """Slots per sequence and layer: the window, or the configured maximum context."""
        if self.sliding_window is not None:
            return self.sliding_window
        return self.max_context

    # ---- parameter counts -------------------------------------------------------------------------
    def param_counts(self) -> tuple[int, int]:
        """(total, active per token) parameter counts, embeddings and output included."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        expert = 3 * self.dim * self.hidden_dim
        norms = 2 * self.dim
        if self.moe is not None:
            ffn_total = self.moe.num_experts * expert + self.dim * self.moe.num_experts
            ffn_active = self.moe.num_experts_per_tok * expert + self.dim * self.moe.num_experts
        else:
            ffn_total = ffn_active = expert
        outside = 2 * self.vocab_size * self.dim + self.dim
        total = self.n_layers * (attn + ffn_total + norms) + outside
        active = self.n_layers * (attn + ffn_active + norms) + outside
        return total, active

    def kv_bytes_per_token(self, bytes_per_elem: int) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_elem

    # ---- (de)serialisation ------------------------------------------------------------------------
    def to_params_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("max_context")
        if self.moe is None:
            d.pop("moe")
        return d

    @classmethod
    def from_params(cls, d: dict[str, Any]) -> ModelArgs:
        """From a Mistral-native `params.json` dictionary."""
        with _fields_of("params.json"):
            dim = int(d["dim"])
            n_heads = int(d["n_heads"])
            moe = d.get("moe")
            return cls(
                dim=dim,
                n_layers=int(d["n_layers"]),
                head_dim=int(d.get("head_dim") or dim // n_heads),
                hidden_dim=int(d["hidden_dim"]),
                n_heads=n_heads,
                n_kv_heads=int(d.get("n_kv_heads", n_heads)),
                vocab_size=int(d["vocab_size"]),
                norm_eps=float(d.get("norm_eps", 1e-5)),
                rope_theta=float(d.get("rope_theta", 10000.0)),
                sliding_window=_opt_int(d.get("sliding_window")),
                moe=MoeArgs(int(moe["num_experts"]), int(moe["num_experts_per_tok"])) if moe else None,
            )

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> ModelArgs:
        """From a Hugging Face `config.json` of a Mistral or Mixtral model."""
        with _fields_of("config.json"):
            dim = int(d["hidden_size"])
            n_heads = int(d["num_attention_heads"])
            theta = d.get("rope_theta")
            if theta is None:
                theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
            n_experts = d.get("num_local_experts")
            moe = None
            if n_experts:
                moe = MoeArgs(int(n_experts), int(d.get("num_experts_per_tok", 2)))
            return cls(
                dim=dim,
                n_layers=int(d["num_hidden_layers"]),
                head_dim=int(d.get("head_dim") or dim // n_heads),
                hidden_dim=int(d["intermediate_size"]),
                n_heads=n_heads,
                n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
                vocab_size=int(d["vocab_size"]),
                norm_eps=float(d.get("rms_norm_eps", 1e-5)),
                rope_theta=float(theta),
                sliding_window=_opt_int(d.get("sliding_window")),
                moe=moe,
            )

    def to_hf_config(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "architectures": ["MixtralForCausalLM" if self.moe else "MistralForCausalLM"],
            "model_type": "mixtral" if self.moe else "mistral",
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "head_dim": self.head_dim,
            "intermediate_size": self.hidden_dim,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "max_position_embeddings": self.max_context,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
        if self.moe:
            d["num_local_experts"] = self.moe.num_experts
            d["num_experts_per_tok"] = self.moe.num_experts_per_tok
        return d


@contextmanager
def _fields_of(filename: str) -> Iterator[None]:
    """Turn a missing or mistyped field of a config file into one ConfigError line naming the file."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{filename}: {e}") from None
    except KeyError as e:
        raise ConfigError(f"{filename} lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{filename} has a field of the wrong type ({e})") from None


def _opt_int(v: Any) -> int | None:
    if v is None:
        return None
    return int(v)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path.name} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} must hold a JSON object")
    return data
