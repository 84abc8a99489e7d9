"""Where the package keeps its own files (a bottom module: the runtime, shapes and tests all need it)."""

from __future__ import annotations

from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "builtin"  # the shipped model: params, weights, tokenizer, card
