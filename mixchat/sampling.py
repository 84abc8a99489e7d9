"""Next-token choice: greedy at temperature 0, otherwise temperature + nucleus (top-p) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


def check_seed(seed: int | None) -> None:
    """Raise ValueError (one line, naming the value) for a seed torch cannot take."""
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED} (2^63 - 1), got {seed}")


@dataclass
class SamplingSettings:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top-p must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError("max tokens must be at least 1")
        check_seed(self.seed)


class Sampler:
    """Holds the random generator so a seeded run is reproducible across steps."""

    def __init__(self, settings: SamplingSettings, device: torch.device) -> None:
        self.settings = settings
        self.generator: torch.Generator | None = None
        if settings.temperature > 0:
            self.generator = torch.Generator(device=device)
            if settings.seed is not None:
                self.generator.manual_seed(settings.seed)
            else:
                self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # logits: [B, V] float32 -> [B] token ids (on the logits' device)
        s = self.settings
        if s.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(-1)
            # Drop a token when the mass before it already reaches top_p (the top token always stays).
            sorted_p = sorted_p.masked_fill(cum - sorted_p >= s.top_p, 0.0)
            choice = torch.multinomial(sorted_p, 1, generator=self.generator)
            return order.gather(-1, choice).squeeze(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
