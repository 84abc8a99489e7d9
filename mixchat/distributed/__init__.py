"""Pipeline-parallel inference: one model split by layers over the ranks of a torchrun job.

    torchrun --nproc-per-node N -m mixchat [COMMAND ...]

Rank 0 runs the front end as usual; its engine sees a model and a cache with the ordinary interfaces
(`driver.PipelineModel`, `driver.PipelineCache`) whose work is spread over the ranks. The other ranks run
`follower.follow`: they hold their stage's weights and cache, and do what rank 0's commands say.

Modules: `partition` (who holds which layers), `comm` (process groups and the command channel),
`lifecycle` (signals and watchdogs so a dead rank never leaves the others hanging), `driver` (rank 0's
side), `follower` (the other ranks' side), `launch` (the glue to the command line).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mixchat.distributed.launch import Pipeline

_current: Pipeline | None = None


def launched() -> bool:
    """True inside a multi-process torchrun job (a world of one runs the ordinary single-process path)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current() -> Pipeline | None:
    """The pipeline this process leads (rank 0 of a torchrun job), else None. Kept here, in a module that
    imports nothing, so the runtime can ask without importing the launcher (which imports the runtime)."""
    return _current


def set_current(pipeline: Pipeline | None) -> None:
    global _current
    _current = pipeline
