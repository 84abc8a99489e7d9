"""Human-readable sizes, shared by every front end that prints cache or memory figures."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1,048,576 -> '1.0 MiB' (binary units: caches are sized in powers of two)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
