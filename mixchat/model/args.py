"""Model hyper-parameters (read from checkpoint files by `mixchat.checkpoint_config`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from mixchat.errors import ConfigError as ConfigError  # re-exported


@dataclass
class MoeArgs:
    num_experts: int = 8
    num_experts_per_tok: int = 2


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

    def to_params_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("max_context")
        if self.moe is None:
            d.pop("moe")
        return d
