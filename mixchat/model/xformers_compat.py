"""Quiet access to xformers.

xformers prints a loud warning at import when its compiled kernels do not match the installed torch (always
the case on a CPU-only machine). Its `attn_bias` classes are pure Python and work anyway, and mixchat has an
SDPA path for everything the kernels would do, so the warning would only alarm users: it is muted here, and
whether the kernels really run is decided by trying them once on the device in question.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType

import torch

# (XFORMERS_IGNORE_FLASH_VERSION_CHECK is set in `mixchat/__init__.py`, before anything imports xformers.)


@contextmanager
def _quiet() -> Iterator[None]:
    log = logging.getLogger("xformers")
    old = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(old)


@cache
def attn_bias() -> ModuleType:
    """The `xformers.ops.fmha.attn_bias` module, imported without its kernel warning."""
    with _quiet():
        from xformers.ops.fmha import attn_bias as module
    return module


@cache
def kernels_work(device: str) -> bool:
    """True when `memory_efficient_attention` runs on `device` (tried once on tiny tensors)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    try:
        ops = memory_efficient_attention_fn()
        x = torch.zeros(1, 4, 1, 64, device=device, dtype=torch.bfloat16)
        ops(x, x, x)
        torch.cuda.synchronize(device)
        return True
    except Exception:
        return False


@cache
def memory_efficient_attention_fn() -> Callable[..., torch.Tensor]:
    with _quiet():
        from xformers.ops import memory_efficient_attention
    return memory_efficient_attention
