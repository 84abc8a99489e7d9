"""The one place that decides how a model's passes run on this machine.

Everything that used to be decided in several places (the engine's constructor, module forwards, probes
reading environment variables) is decided here, once per engine, from the `Flags` read at start-up and
what the device can do. The model itself stays the reference: a faster path is either a separate
executor or a module swap made here, before the first pass.
"""

from __future__ import annotations

from torch import nn

from mixchat.exec.cpu import CpuRunner
from mixchat.exec.executors import CpuExecutor, Executor, GraphExecutor, ModelLike, ModuleExecutor
from mixchat.exec.gpu_modules import install_gpu_modules
from mixchat.exec.graphs import GraphDecoder, decoder_wanted
from mixchat.flags import Flags, flags
from mixchat.model.stage import StageModel
from mixchat.model.transformer import Transformer


def prepare_modules(model: nn.Module, settings: Flags | None = None) -> list[str]:
    """Swap the GPU modules into a CUDA model or pipeline stage (no-op elsewhere); returns their names."""
    return install_gpu_modules(model, settings or flags())


def choose_stage_decoder(stage: StageModel | Transformer, settings: Flags | None = None) -> GraphDecoder | None:
    """The GPU modules swapped in, and a graph decoder for the decode steps where the probes and the flags
    allow one. A pipeline rank asks this for its own layers (its pre-fill runs the stage's modules);
    `choose_executor` asks it for a whole model."""
    settings = settings or flags()
    prepare_modules(stage, settings)
    return GraphDecoder(stage, settings=settings) if decoder_wanted(stage, settings) else None


def choose_executor(model: ModelLike, settings: Flags | None = None) -> Executor:
    """The executor for a whole model, or for rank 0's pipeline wrapper (which only the module path serves:
    its stage has chosen for itself)."""
    settings = settings or flags()
    if isinstance(model, Transformer):
        decoder = choose_stage_decoder(model, settings)
        if decoder is not None:
            return GraphExecutor(model, decoder)
        if settings.cpu_runner and CpuRunner.suits(model):
            return CpuExecutor(model)
    return ModuleExecutor(model)
