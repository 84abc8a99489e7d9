"""Run by tests/test_pipeline.py under `torchrun --nproc-per-node 2`: the scenarios of
pipeline_scenarios.py on a pipeline, through the same entry point as `mixchat` (run_pipelined).

    pipeline_worker.py CKPT OUT.safetensors DATA_DIR

Rank 0 runs the scenarios and writes their tensors; the other ranks follow. DATA_DIR must hold the
conversation 'single' (saved by one process after turn two); this run saves 'pipeline' there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from pipeline_scenarios import FOUR, cancelled_prefill, conversation, generate_packed, resumed, runtime
from safetensors.torch import save_file

from mixchat.cli.main import run_guarded
from mixchat.distributed.launch import run_pipelined


def micro_batched(rt: Any) -> dict[str, torch.Tensor]:
    """Four sequences in micro-batches of two, counting the passes rank 0 submits for them."""
    model = rt.model
    submit = model.submit
    submitted = [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        submitted[0] += 1
        return submit(*args, **kwargs)

    model.submit = counting
    try:
        tensors = generate_packed(rt, "four2", FOUR)
    finally:
        del model.submit
    tensors["count.four2.submitted"] = torch.tensor([submitted[0]])
    graphs = getattr(model, "graphs", None)  # rank 0's stage decoder (MIXCHAT_CUDA_GRAPHS=eager)
    tensors["count.four2.subset_graphs"] = torch.tensor([len(graphs.subset_row_sets) if graphs is not None else -1])
    return tensors


def main() -> int:
    ckpt, out, data = (Path(a) for a in sys.argv[1:4])

    def scenarios(_: argparse.Namespace) -> int:
        rt = runtime(ckpt)
        tensors = generate_packed(rt, "gen1")
        rt.model.micro_batches = 2  # type: ignore[attr-defined]
        tensors |= generate_packed(rt, "gen2")
        tensors |= micro_batched(rt)
        tensors |= cancelled_prefill(rt, "cancel")
        tensors |= conversation(rt, data, "pipeline", "conv")
        tensors |= resumed(rt, data, "single", "resumed")
        graphs = getattr(rt.model, "graphs", None)  # rank 0's stage decoder (MIXCHAT_CUDA_GRAPHS=eager)
        tensors["stage_graphs"] = torch.tensor([graphs.captured if graphs is not None else -1])
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
        return 0

    options = argparse.Namespace(command="generate", model=str(ckpt), device="cpu", dtype="float32", max_context=None)
    return run_pipelined(scenarios, options, run_guarded)


if __name__ == "__main__":
    sys.exit(main())
