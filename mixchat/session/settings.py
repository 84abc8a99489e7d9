"""Generation settings of one conversation.

They travel with the conversation (saved in its transcript) rather than with the process, so a resumed
conversation goes on the way it started. Front ends may change any field between turns; the conversation
applies them to the shared engine and model right before each turn, because one loaded model can serve
several conversations with different settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mixchat.engine import DEFAULT_CHUNK_SIZE
from mixchat.sampling import MAX_SEED, SamplingSettings, check_seed


class SettingsError(ValueError):
    """A setting outside its range; the message is one printable line."""


@dataclass
class ChatSettings:
    system: str | None = None  # system prompt, placed in the first user turn (see Conversation)
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512  # per reply
    seed: int | None = None  # with a seed, turn n samples with seed + n: reproducible, yet not every turn alike
    chunk_size: int = DEFAULT_CHUNK_SIZE  # pre-fill at most this many tokens per forward pass
    experts_per_token: int | None = None  # MoE top-k; None = the model's own value

    def __post_init__(self) -> None:
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError for values the engine would refuse later, mid-turn."""
        if not self.temperature >= 0:  # also catches NaN
            raise SettingsError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SettingsError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise SettingsError(f"max tokens must be at least 1, got {self.max_tokens}")
        if self.chunk_size < 1:
            raise SettingsError(f"chunk size must be at least 1, got {self.chunk_size}")
        if self.experts_per_token is not None and self.experts_per_token < 1:
            raise SettingsError(f"experts per token must be at least 1, got {self.experts_per_token}")
        try:
            check_seed(self.seed)
        except ValueError as e:
            raise SettingsError(str(e)) from None

    def sampling(self, turn: int) -> SamplingSettings:
        """Sampling settings for the reply to user turn number `turn` (0-based)."""
        seed = None if self.seed is None else (self.seed + turn) % (MAX_SEED + 1)  # stays in torch's range
        return SamplingSettings(self.temperature, self.top_p, self.max_tokens, seed)

    def to_json(self) -> dict[str, Any]:
        """Everything except the system prompt, which the transcript keeps as a message."""
        d = asdict(self)
        d.pop("system")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], system: str | None = None) -> ChatSettings:
        """Tolerant of unknown keys (a newer minor version) and missing ones (defaults)."""
        if not isinstance(d, dict):
            raise SettingsError("settings must be a JSON object")
        known = {f.name for f in fields(cls)} - {"system"}
        kwargs: dict[str, Any] = {}
        for key in known & d.keys():
            kwargs[key] = d[key]
        try:
            for key in ("temperature", "top_p"):
                if key in kwargs:
                    kwargs[key] = float(kwargs[key])
            for key in ("max_tokens", "chunk_size"):
                if key in kwargs:
                    kwargs[key] = int(kwargs[key])
            for key in ("seed", "experts_per_token"):
                if kwargs.get(key) is not None:
                    kwargs[key] = int(kwargs[key])
        except (TypeError, ValueError) as e:
            raise SettingsError(f"a setting has the wrong type ({e})") from None
        return cls(system=system, **kwargs)
