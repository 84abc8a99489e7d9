"""Model hyper-parameters, read from Mistral-native `params.json` or Hugging Face `config.json`.

Reading is honest: a field that would change the maths in a way this model does not implement (RoPE
scaling, attention biases, another activation, an unknown `model_type`) is refused with one line naming the
field, rather than ignored; a model that then runs with wrong numbers is worse than one that does not run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mixchat.errors import ConfigError as ConfigError  # re-exported


@dataclass
class MoeArgs:
    num_experts: int = 8
    num_experts_per_tok: int = 2


# Hugging Face model types whose decoder is this one (Ministral: per-layer windows via `layer_types`).
HF_MODEL_TYPES = ("mistral", "mixtral", "ministral")
_HF_LAYER_TYPES = ("full_attention", "sliding_attention")
Window = int | None  # a layer's sliding window; None = full attention


@dataclass
class ModelArgs:
    """The shape of a Mistral-family model.

    `sliding_window` is one window for every layer, None for full attention, or a list of per-layer windows
    (None entries: full attention) repeated over the layers, as Mistral's params.json writes it for models
    whose layers alternate (Ministral 8B) and as mistral-inference reads it: layer i uses entry i % len(list),
    and the list's length divides n_layers.
    """

    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int | list[Window] | None = None
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
        if isinstance(self.sliding_window, list):
            if not self.sliding_window or self.n_layers % len(self.sliding_window):
                raise ConfigError(
                    f"'sliding_window' lists {len(self.sliding_window)} windows, which must divide n_layers "
                    f"({self.n_layers}): the list repeats over the layers"
                )
            windows = [None if w is None or w <= 0 else int(w) for w in self.sliding_window]
            # One window for every layer is the plain case: keep a single value, as the rest expects.
            self.sliding_window = windows[0] if len(set(windows)) == 1 else windows
        elif self.sliding_window is not None and self.sliding_window <= 0:
            self.sliding_window = None
        if self.moe is not None and not 1 <= self.moe.num_experts_per_tok <= self.moe.num_experts:
            raise ConfigError("num_experts_per_tok must be between 1 and num_experts")

    def window_of(self, layer: int) -> Window:
        """Layer `layer`'s sliding window (None: it attends to the whole context)."""
        w = self.sliding_window
        return w[layer % len(w)] if isinstance(w, list) else w

    @property
    def layer_windows(self) -> list[Window]:
        return [self.window_of(i) for i in range(self.n_layers)]

    @property
    def layout_window(self) -> int | list[Window] | None:
        """The `window` of `fresh_layout` for this model: one window, or one per layer."""
        w = self.sliding_window
        return self.layer_windows if isinstance(w, list) else w

    @property
    def per_layer_windows(self) -> bool:
        """Whether the layers' windows differ (each layer then has a rolling buffer of its own size)."""
        return isinstance(self.sliding_window, list)

    def layer_capacity(self, layer: int) -> int:
        """Slots per sequence of layer `layer`: its window, or the maximum context for full attention."""
        w = self.window_of(layer)
        return w if w is not None else self.max_context

    @property
    def cache_capacity(self) -> int:
        """Slots per sequence of the largest layer: the window, or the configured maximum context."""
        return max(self.layer_capacity(i) for i in range(self.n_layers))

    @property
    def windows_summary(self) -> tuple[Window, Window]:
        """(smallest, largest) layer window, None standing for full attention (larger than any window)."""
        ws = self.layer_windows
        finite = [w for w in ws if w is not None]
        smallest = min(finite) if finite else None
        largest = None if None in ws else max(finite)
        return smallest, largest

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

    def kv_bytes_full(self, bytes_per_elem: int) -> int:
        """KV cache bytes of one sequence once every layer's buffer is full (each layer its own size)."""
        per_layer_slot = 2 * self.n_kv_heads * self.head_dim * bytes_per_elem
        return sum(self.layer_capacity(i) for i in range(self.n_layers)) * per_layer_slot

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
        _refuse_unimplemented_params(d)
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
                sliding_window=_window_field(d.get("sliding_window")),
                moe=MoeArgs(int(moe["num_experts"]), int(moe["num_experts_per_tok"])) if moe else None,
            )

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> ModelArgs:
        """From a Hugging Face `config.json` of a Mistral, Mixtral or Ministral model."""
        _refuse_unimplemented_hf(d)
        with _fields_of("config.json"):
            dim = int(d["hidden_size"])
            n_heads = int(d["num_attention_heads"])
            n_layers = int(d["num_hidden_layers"])
            theta = d.get("rope_theta")
            if theta is None:
                theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
            n_experts = d.get("num_local_experts")
            moe = None
            if n_experts:
                moe = MoeArgs(int(n_experts), int(d.get("num_experts_per_tok", 2)))
            return cls(
                dim=dim,
                n_layers=n_layers,
                head_dim=int(d.get("head_dim") or dim // n_heads),
                hidden_dim=int(d["intermediate_size"]),
                n_heads=n_heads,
                n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
                vocab_size=int(d["vocab_size"]),
                norm_eps=float(d.get("rms_norm_eps", 1e-5)),
                rope_theta=float(theta),
                sliding_window=_hf_windows(d, n_layers),
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
        if self.per_layer_windows:
            windows = self.layer_windows
            if self.moe is not None or len({w for w in windows if w is not None}) > 1:
                raise ConfigError("config.json can express per-layer windows only as one window and full layers")
            d["architectures"] = ["MinistralForCausalLM"]
            d["model_type"] = "ministral"
            d["sliding_window"] = next(w for w in windows if w is not None)
            d["layer_types"] = [_HF_LAYER_TYPES[w is not None] for w in windows]
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
    return None if v is None else int(v)


def _window_field(v: Any) -> int | list[Window] | None:
    """params.json's `sliding_window`: null, one window, or a list of per-layer windows."""
    if isinstance(v, list):
        return [_opt_int(w) for w in v]
    return _opt_int(v)


def _hf_windows(d: dict[str, Any], n_layers: int) -> int | list[Window] | None:
    """config.json's windows: `sliding_window`, and per layer through `layer_types` (Ministral)."""
    window = _opt_int(d.get("sliding_window"))
    types = d.get("layer_types")
    if types is None or window is None:
        return window
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(f"config.json field 'layer_types' must list one type per layer ({n_layers})")
    unknown = sorted({t for t in types if t not in _HF_LAYER_TYPES})
    if unknown:
        raise ConfigError(
            f"config.json field 'layer_types' holds {unknown[0]!r}, which mixchat does not implement "
            f"(only {' and '.join(_HF_LAYER_TYPES)})"
        )
    return [window if t == "sliding_attention" else None for t in types]


def _refuse(filename: str, name: str, value: Any, why: str) -> None:
    raise ConfigError(f"{filename} field {name!r} = {json.dumps(value)[:80]} is not supported: {why}")


def _check_rope(filename: str, name: str, value: Any) -> None:
    """RoPE variants other than the plain one (linear, dynamic, yarn, llama3...) change every score."""
    if value is None:
        return
    if not isinstance(value, dict):
        _refuse(filename, name, value, "mixchat implements only unscaled rotary embeddings")
    kind = value.get("rope_type", value.get("type", "default"))
    if kind not in (None, "default"):
        _refuse(filename, name, value, "mixchat implements only unscaled rotary embeddings (rope_type default)")


def _refuse_unimplemented_hf(d: dict[str, Any]) -> None:
    kind = d.get("model_type")
    if kind is not None and kind not in HF_MODEL_TYPES:
        _refuse("config.json", "model_type", kind, f"mixchat runs {', '.join(HF_MODEL_TYPES)} models")
    _check_rope("config.json", "rope_scaling", d.get("rope_scaling"))
    _check_rope("config.json", "rope_parameters", d.get("rope_parameters"))
    for name in ("attention_bias", "mlp_bias"):
        if d.get(name):
            _refuse("config.json", name, d[name], "mixchat's projections have no bias")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        _refuse("config.json", "hidden_act", act, "mixchat's feed-forward is SwiGLU (silu)")
    if d.get("use_sliding_window") is False and d.get("sliding_window") is not None:
        _refuse("config.json", "use_sliding_window", False, "ambiguous with a sliding_window set")


def _refuse_unimplemented_params(d: dict[str, Any]) -> None:
    for name in ("rope_scaling", "yarn", "llama_4_scaling"):
        if d.get(name) is not None:
            _refuse("params.json", name, d[name], "mixchat implements only unscaled rotary embeddings")
    for name in ("attention_bias", "bias", "mlp_bias"):
        if d.get(name):
            _refuse("params.json", name, d[name], "mixchat's projections have no bias")


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
