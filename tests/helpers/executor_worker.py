"""Runs the executor schedule in a process of its own and writes what it saw (tests/test_executors.py).

    executor_worker.py EXECUTOR CKPT OUT.safetensors [QUANT]

EXECUTOR is `fused` (the fused graph step, over quantized weights too; the caller sets TRITON_INTERPRET=1),
`quant-triton` (the Triton modules of quantized weights, in the interpreter too) or `pipeline` (rank 0 of a
two-rank gloo job, started under torchrun). QUANT (int8, int4) loads the checkpoint quantized.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from executor_schedule import CHUNK, run_schedule
from safetensors.torch import save_file

from mixchat.cli.main import run_guarded
from mixchat.distributed.launch import run_pipelined
from mixchat.engine import Engine
from mixchat.exec.executors import GraphExecutor, ModuleExecutor
from mixchat.exec.graphs import GraphDecoder
from mixchat.exec.quant_gpu import install_gpu_quant_modules
from mixchat.flags import Flags, flags
from mixchat.loader import build_model, inspect_folder
from mixchat.quant.format import make_spec
from mixchat.quant.modules import QuantLinear
from mixchat.runtime import load_runtime


def _interpreted_quant_modules(model: torch.nn.Module) -> None:
    """The Triton modules, as a GPU gets them, but for the output head: its 32,000 columns are a thousand
    programs a pass, which Triton's interpreter runs one by one (nine tenths of these runs' time). The head's
    kernel path is the dense projection of tests/test_quant.py's interpreter test."""
    assert install_gpu_quant_modules(model, any_device=True) == ["TritonQuantLinear", "TritonQuantMoe"]
    head = getattr(model, "output", None)
    if isinstance(head, QuantLinear):
        head.__class__ = QuantLinear


def main() -> int:
    which, ckpt, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    quant = sys.argv[4] if len(sys.argv) > 4 else None
    spec = make_spec(quant) if quant else None
    if which == "quant-triton":
        model = build_model(inspect_folder(ckpt), "cpu", torch.float32, spec)
        _interpreted_quant_modules(model)
        engine = Engine(model, None, chunk_size=CHUNK, eos_id=-1, executor=ModuleExecutor(model))
        save_file(run_schedule(engine), str(out))
        return 0
    if which == "fused":  # quantized: over the Triton modules' kernels, as on a GPU
        model = build_model(inspect_folder(ckpt), "cpu", torch.float32, spec)
        if spec is not None:
            _interpreted_quant_modules(model)
        decoder = GraphDecoder(model, fused=True, settings=Flags(cuda_graphs="eager"))
        engine = Engine(model, None, chunk_size=CHUNK, eos_id=-1, executor=GraphExecutor(model, decoder))
        save_file(run_schedule(engine), str(out))
        return 0

    def on_rank0(_: argparse.Namespace) -> int:
        rt = load_runtime(ckpt, device="cpu", dtype="float32", chunk_size=CHUNK, quant=spec)
        save_file(run_schedule(rt.engine), str(out))
        if flags().cuda_graphs == "eager":  # rank 0's stage decoded through its graph step, on row subsets too
            graphs = getattr(rt.model, "graphs", None)
            assert graphs is not None and graphs.subset_row_sets, "the stage graph step did not run"
        return 0

    options = argparse.Namespace(
        command="generate",
        model=str(ckpt),
        device="cpu",
        dtype="float32",
        max_context=None,
        quant=quant,
        group_size=None,
    )
    return run_pipelined(on_rank0, options, run_guarded)


if __name__ == "__main__":
    sys.exit(main())
