"""A pipeline stage's decode graph replayed on a subset of the cache's rows equals the eager stage.

Micro-batched decode replays one graph per micro-batch (each over part of the rows), several in flight.
`scripts/check_stage_graphs.py` holds the comparison (first, middle and last stages; a wrapped window and
a growing full-attention buffer; halves alternating as two micro-batches, a reordered subset, one row).
On the CPU the graph step runs eagerly (`_EagerReplay`), which checks the step's slots, rows and static
buffers; on a GPU the graphs are captured and replayed in bf16, with freed small blocks zeroed between
steps so that a graph reading memory it does not own fails.
"""

from __future__ import annotations

import sys

import pytest
import torch
from session_support import REPO

sys.path.insert(0, str(REPO / "scripts"))

from check_stage_graphs import PARTS, build_stage, decoder_for, model_args, run_cases

from mixchat.cache import RollingCache


def _assert_all_pass(device: str, fused: bool) -> None:
    outcomes = run_cases(torch.device(device), seed=3, fused=fused, budget=600.0)
    assert outcomes
    failed = [o.line() for o in outcomes if not o.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.usefixtures("single_thread")
def test_subset_steps_of_the_graph_step_equal_the_eager_stage_on_cpu() -> None:
    _assert_all_pass("cpu", fused=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stage_graphs_replayed_on_row_subsets_equal_the_eager_stage_on_gpu() -> None:
    _assert_all_pass("cuda", fused=True)


@pytest.mark.usefixtures("single_thread")
def test_a_subset_graph_owns_the_row_ids_it_reads() -> None:
    """A captured graph holds only the addresses of what it reads: the record must keep the row-id tensor
    alive (its loss, memory reused under a replay, was the device-side assert of micro-batched decode)."""
    args = model_args(16)
    stage = build_stage(args, PARTS["middle"], torch.device("cpu"), torch.float32, seed=0)
    dec = decoder_for(stage, fused=False)
    cache = RollingCache(args, 4, "cpu", torch.float32, layers=stage.part.layers)
    for rows in ([2, 3], [0, 1, 2, 3]):
        layout = cache.plan([1] * len(rows), rows)
        cap = dec.run_stage(cache, layout, False, hidden=torch.zeros(len(rows), args.dim))
        cache.advance(layout)
        if rows == [0, 1, 2, 3]:
            assert cap.row_idx is None  # every row in order: no index at all
        else:
            assert cap.row_idx is not None and cap.row_idx.tolist() == rows
