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


def launched() -> bool:
    """True inside a multi-process torchrun job (a world of one runs the ordinary single-process path)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False
