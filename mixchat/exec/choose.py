"""The one place that decides how a model's passes run on this machine, once per engine, from the `Flags`
read at start-up and what the device can do. The model itself stays the reference: a faster path is either
a separate executor or a module swap made here, before the first pass.
"""

from __future__ import annotations

from torch import nn

from mixchat.exec.cpu import CpuRunner
from mixchat.exec.cpu_modules import install_cpu_modules
from mixchat.exec.executors import CpuExecutor, Executor, GraphExecutor, ModelLike, ModuleExecutor
from mixchat.exec.gpu_modules import install_gpu_modules
from mixchat.exec.graphs import GraphDecoder, decoder_wanted
from mixchat.exec.quant_cpu import install_cpu_quant_modules
from mixchat.exec.quant_gpu import install_gpu_quant_modules
from mixchat.flags import Flags, flags
from mixchat.model.stage import StageModel
from mixchat.model.transformer import Transformer
from mixchat.quant.modules import is_quantized


def prepare_modules(model: nn.Module, settings: Flags | None = None, cpu_modules: bool = True) -> list[str]:
    """Swap the device's modules into a model or pipeline stage: the GPU modules into a CUDA one, the
    quantized kernels (CPU or GPU) into a quantized one, and (`cpu_modules`) the CPU decode modules into
    a CPU one. Returns the names of what was swapped."""
    settings = settings or flags()
    swapped = install_gpu_modules(model, settings) + install_gpu_quant_modules(model) + install_cpu_quant_modules(model)
    return swapped + (install_cpu_modules(model) if cpu_modules else [])


def choose_stage_decoder(
    stage: StageModel | Transformer, settings: Flags | None = None, cpu_modules: bool = True
) -> GraphDecoder | None:
    """The device's modules swapped in, and a graph decoder for the decode steps where the probes and the
    flags allow one. A pipeline rank asks this for its own layers (its pre-fill runs the stage's modules);
    `choose_executor` asks it for a whole model."""
    settings = settings or flags()
    prepare_modules(stage, settings, cpu_modules)
    return GraphDecoder(stage, settings=settings) if decoder_wanted(stage, settings) else None


def choose_executor(model: ModelLike, settings: Flags | None = None) -> Executor:
    """The executor for a whole model, or for rank 0's pipeline wrapper (which only the module path serves:
    its stage has chosen for itself)."""
    settings = settings or flags()
    if isinstance(model, Transformer):
        # The lean runner (cpu.py) takes small full-precision float32 CPU models.
        lean = settings.cpu_runner and CpuRunner.suits(model) and not is_quantized(model)
        decoder = choose_stage_decoder(model, settings, cpu_modules=not lean)  # the lean runner's model
        if decoder is not None:  # stays the reference
            return GraphExecutor(model, decoder)
        if settings.cpu_runner and model.device.type == "cpu":
            # Small float32 models run the lean runner; every other CPU model (any size, bf16, int8, int4)
            # the module forward with the CPU kernels swapped in above.
            return CpuExecutor(model, lean=lean)
    return ModuleExecutor(model)
