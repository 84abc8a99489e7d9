"""Human-readable sizes and times, shared by every front end that prints cache, memory or save figures."""

from __future__ import annotations

from datetime import datetime


def local_time(iso: str) -> str:
    """An ISO timestamp as local 'YYYY-MM-DD HH:MM' (as is, if it does not parse)."""
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except (ValueError, TypeError):
        return iso


def human_bytes(n: float) -> str:
    """1,048,576 -> '1.0 MiB' (binary units: caches are sized in powers of two)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
