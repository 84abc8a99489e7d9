"""Every executor this machine can run gives the reference's logits and routing on the same schedule.

The reference is the model's own forward (`ModuleExecutor`). A new executor joins by adding one line to
EXECUTORS: a function from the checkpoint folder to the schedule's results (see
helpers/executor_schedule.py: packed pre-fill chunks over a wrapped rolling buffer, packed decode over all
rows and over a subset of rows in a new order).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from session_support import REPO, make_checkpoint

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

from executor_schedule import CHUNK, run_schedule
from quant_support import dequantized_twin

from mixchat.engine import Engine
from mixchat.exec.executors import CpuExecutor, Executor, GraphExecutor, ModuleExecutor
from mixchat.exec.graphs import GraphDecoder
from mixchat.exec.quant_cpu import install_cpu_quant_modules
from mixchat.flags import Flags
from mixchat.loader import build_model, inspect_folder
from mixchat.model.transformer import Transformer
from mixchat.quant.format import make_spec

Results = dict[str, torch.Tensor]
WORKER = Path(__file__).parent / "helpers" / "executor_worker.py"


def in_process(make: Callable[[Transformer], Executor]) -> Callable[[Path], Results]:
    def run(ckpt: Path) -> Results:
        model = build_model(inspect_folder(ckpt), torch.device("cpu"), torch.float32)
        return run_schedule(Engine(model, None, chunk_size=CHUNK, eos_id=-1, executor=make(model)))

    return run


def in_worker(which: str, launcher: list[str], env: dict[str, str], quant: str = "") -> Callable[[Path], Results]:
    def run(ckpt: Path) -> Results:
        out = ckpt.parent / f"{which}{quant}.safetensors"
        extra = [quant] if quant else []
        proc = subprocess.run(
            [*launcher, str(WORKER), which, str(ckpt), str(out), *extra],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=900,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return load_file(str(out))

    return run


def _eager_graph_step(model: Transformer) -> Executor:
    return GraphExecutor(model, GraphDecoder(model, fused=False, settings=Flags(cuda_graphs="eager")))


def _needs(module: str) -> pytest.MarkDecorator:
    try:
        __import__(module)
        missing = False
    except ImportError:
        missing = True
    return pytest.mark.skipif(missing, reason=f"{module} is not installed")


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
PIPELINE_ENV = {"OMP_NUM_THREADS": "1", "MIXCHAT_PEER_TIMEOUT": "30"}
EXECUTORS = [
    pytest.param(in_process(CpuExecutor), id="cpu"),
    pytest.param(in_process(_eager_graph_step), id="graph-step-eager"),
    pytest.param(
        in_worker("fused", [sys.executable], {"TRITON_INTERPRET": "1"}),
        id="fused-triton-interpreter",
        marks=_needs("triton"),
    ),
    pytest.param(
        in_worker("pipeline", TORCHRUN, PIPELINE_ENV),
        id="pipeline-gloo",
        marks=_needs("torch.distributed"),
    ),
]


def quantized(fmt: str, make: Callable[[Transformer], Executor]) -> Callable[[Path], Results]:
    """An executor over the checkpoint quantized while loading (int8, or int4 in groups of 64 here)."""

    def run(ckpt: Path) -> Results:
        model = build_model(inspect_folder(ckpt), torch.device("cpu"), torch.float32, make_spec(fmt))
        return run_schedule(Engine(model, None, chunk_size=CHUNK, eos_id=-1, executor=make(model)))

    return run


def _cpu_kernels(model: Transformer) -> Executor:
    swapped = install_cpu_quant_modules(model)  # what exec.choose does on the CPU
    assert len(swapped) == 2, swapped  # both kernels passed their probes: the fast path is what is tested
    return CpuExecutor(model, lean=False)


# Quantized executors, each against the module forward of a float32 model holding the dequantized weights.
QUANT_EXECUTORS = (
    [pytest.param(quantized(f, _cpu_kernels), f, id=f"cpu-kernels-{f}") for f in ("int8", "int4")]
    + [pytest.param(quantized(f, _eager_graph_step), f, id=f"graph-step-eager-{f}") for f in ("int8", "int4")]
    + [
        pytest.param(
            in_worker("quant-triton", [sys.executable], {"TRITON_INTERPRET": "1"}, f),
            f,
            id=f"quant-triton-interpreter-{f}",
            marks=_needs("triton"),
        )
        for f in ("int8", "int4")
    ]
    + [  # the fused graph step (eager) over the quantized kernels: fused q/k/v codes, one SwiGLU launch
        pytest.param(
            in_worker("fused", [sys.executable], {"TRITON_INTERPRET": "1"}, f),
            f,
            id=f"fused-triton-interpreter-{f}",
            marks=_needs("triton"),
        )
        for f in ("int8", "int4")
    ]
    + [
        pytest.param(
            in_worker("pipeline", TORCHRUN, PIPELINE_ENV, f),
            f,
            id=f"pipeline-gloo-{f}",
            marks=_needs("torch.distributed"),
        )
        for f in ("int8", "int4")
    ]
    + [  # the stages' graph step (eager) over quantized layers, subset-row decode steps included
        pytest.param(
            in_worker("pipeline", TORCHRUN, {**PIPELINE_ENV, "MIXCHAT_CUDA_GRAPHS": "eager"}, "int4"),
            "int4",
            id="pipeline-gloo-graph-step-eager-int4",
            marks=_needs("torch.distributed"),
        ),
    ]
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("exec") / "model")


@pytest.fixture(scope="module")
def reference(ckpt: Path) -> Results:
    return in_process(ModuleExecutor)(ckpt)


@pytest.mark.parametrize("run", EXECUTORS)
def test_executor_matches_the_reference(run: Callable[[Path], Results], ckpt: Path, reference: Results) -> None:
    _compare(run(ckpt), reference)


_dequantized_references: dict[str, Results] = {}


@pytest.mark.parametrize(("run", "fmt"), QUANT_EXECUTORS)
def test_quantized_executor_matches_the_dequantized_reference(
    run: Callable[[Path], Results], fmt: str, ckpt: Path
) -> None:
    if fmt not in _dequantized_references:
        q = build_model(inspect_folder(ckpt), torch.device("cpu"), torch.float32, make_spec(fmt))
        twin = dequantized_twin(q)
        _dequantized_references[fmt] = run_schedule(
            Engine(twin, None, chunk_size=CHUNK, eos_id=-1, executor=ModuleExecutor(twin))
        )
    _compare(run(ckpt), _dequantized_references[fmt])


def _compare(got: Results, reference: Results) -> None:
    assert sorted(got) == sorted(reference)
    assert any(k.startswith("subset") for k in got) and any(k.endswith(".experts") for k in got)
    for name, want in reference.items():
        if name.endswith(".experts"):
            assert torch.equal(got[name], want), f"{name}: other experts chosen"
        else:
            torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
