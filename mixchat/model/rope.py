"""Rotary position embeddings on interleaved pairs, the layout of Mistral's native checkpoints.

Positions are absolute token indices, so a key rotated once can sit in the rolling cache at any slot:
the attention score between two rotated vectors depends only on their position difference.

A pair (x[2i], x[2i+1]) rotated by angle a is the complex number x[2i] + i x[2i+1] times e^(ia), so the
rotation is one complex multiply on a view of the tensor instead of a dozen real ops: the same
arithmetic (float32 cos/sin, products and sums), and what a small model's decode step needs.
"""

from __future__ import annotations

import torch


class Rotary:
    """Caches the inverse frequencies per device; the rotation is built once per pass from positions."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim = head_dim
        self.theta = theta
        self._inv_freq: dict[torch.device, torch.Tensor] = {}
        self._table: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        f = self._inv_freq.get(device)
        if f is None:
            exps = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
            f = 1.0 / (self.theta**exps)
            self._inv_freq[device] = f
        return f

    def table(self, device: torch.device, n: int) -> torch.Tensor:
        """`rotation(arange(N))` for some N >= n, grown by doubling and kept: decode reads one row a step.

        The rows are computed by `rotation` itself, so they equal what a pass would compute on the fly.
        """
        t = self._table.get(device)
        if t is None or t.shape[0] < n:
            size = max(1024, 1 << (n - 1).bit_length())
            t = self.rotation(torch.arange(size, device=device))
            self._table[device] = t
        return t

    def rotation(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: [T] -> [T, 1, head_dim // 2] complex64 e^(i * angle), broadcast over heads
        angles = positions.to(torch.float32)[:, None] * self.inv_freq(positions.device)[None, :]
        return torch.polar(torch.ones_like(angles), angles)[:, None, :]


def apply_rotary(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    # x: [T, H, D] with pairs (x[2i], x[2i+1]) rotated by angle i; rot: [T, 1, D/2] complex64.
    T, H, D = x.shape
    xf = x if x.dtype == torch.float32 else x.float()
    xc = torch.view_as_complex(xf.reshape(T, H, D // 2, 2))  # [T, H, D/2]
    return torch.view_as_real(xc * rot).view(T, H, D).type_as(x)
