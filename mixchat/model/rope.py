"""Rotary position embeddings on interleaved pairs, the layout of Mistral's native checkpoints.

Positions are absolute token indices, so a key rotated once can sit in the rolling cache at any slot:
the attention score between two rotated vectors depends only on their position difference.
"""

from __future__ import annotations

import torch


class Rotary:
    """Caches the inverse frequencies per device; cos/sin are built per call from positions."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim = head_dim
        self.theta = theta
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        f = self._inv_freq.get(device)
        if f is None:
            exps = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
            f = 1.0 / (self.theta**exps)
            self._inv_freq[device] = f
        return f

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T] -> cos, sin: [T, 1, head_dim // 2] (float32, broadcast over heads)
        angles = positions.to(torch.float32)[:, None] * self.inv_freq(positions.device)[None, :]
        return angles.cos()[:, None, :], angles.sin()[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, H, D] with pairs (x[2i], x[2i+1]) rotated by angle i.
    xf = x.float().unflatten(-1, (-1, 2))  # [T, H, D/2, 2]
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).type_as(x)
