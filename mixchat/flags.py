"""Every `MIXCHAT_*` switch that changes how mixchat runs, read once into one frozen object.

Before this module the variables were read where they were used: `MIXCHAT_FUSED` on every norm call,
`MIXCHAT_ATTENTION` inside a cached probe, others in the engine's constructor. A run could then mix two
settings, and nobody could list them. Now `flags()` reads them all the first time it is called; the
executor is chosen from that object (`mixchat.exec.choose`), and README's table lists the same fields.
Tests that change a variable in-process call `flags.cache_clear()` afterwards (subprocesses read afresh).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

GraphsMode = Literal["1", "0", "eager"]


@dataclass(frozen=True)
class Flags:
    cuda_graphs: GraphsMode = "1"  # MIXCHAT_CUDA_GRAPHS: 1 graphs where supported, 0 never, eager no capture
    fused: bool = True  # MIXCHAT_FUSED=0: no fused Triton kernels (norms, decode step)
    xformers: bool = True  # MIXCHAT_ATTENTION=sdpa: torch SDPA even where xformers kernels run
    cpu_runner: bool = True  # MIXCHAT_CPU_RUNNER=0: the module forward instead of the lean CPU executor
    peer_timeout: float = 60.0  # MIXCHAT_PEER_TIMEOUT: seconds a pipeline rank waits for another


def read_flags(env: dict[str, str] | os._Environ[str] = os.environ) -> Flags:
    graphs = env.get("MIXCHAT_CUDA_GRAPHS", "1")
    try:
        timeout = float(env.get("MIXCHAT_PEER_TIMEOUT", "60"))
    except ValueError:
        timeout = 60.0
    return Flags(
        cuda_graphs=graphs if graphs in ("0", "eager") else "1",  # type: ignore[arg-type]
        fused=env.get("MIXCHAT_FUSED", "1") != "0",
        xformers=env.get("MIXCHAT_ATTENTION", "").lower() != "sdpa",
        cpu_runner=env.get("MIXCHAT_CPU_RUNNER", "1") != "0",
        peer_timeout=timeout if timeout > 0 else 60.0,
    )


@functools.cache
def flags() -> Flags:
    """The process's switches, read on first use."""
    return read_flags()


DATA_DIR = "MIXCHAT_DATA_DIR"  # where conversations live
CONFIG_DIR = "MIXCHAT_CONFIG_DIR"  # preferences and user themes
FREE_MEMORY = "MIXCHAT_FREE_MEMORY"  # bytes free for the weights, instead of the system's reading


def folder_from_env(name: str) -> str | None:
    """One of the variables just above, read at each call: unlike the switches they change no computation
    (a folder, a memory reading), and tests set them in-process."""
    return os.environ.get(name) or None
