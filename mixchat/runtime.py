"""A loaded model ready to talk: weights, tokenizer and engine, on a chosen device and dtype.

Front ends and the session layer get everything from here, so device/dtype rules and the built-in model's
location are decided in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mixchat.engine import DEFAULT_CHUNK_SIZE, Engine
from mixchat.errors import UserError as UserError  # re-exported
from mixchat.exec.cpu import MAX_PARAMS as CPU_RUNNER_MAX_PARAMS
from mixchat.flags import FREE_MEMORY, folder_from_env
from mixchat.loader import (
    DTYPES,
    Checkpoint,
    LoadError,
    build_model,
    check_files,
    inspect_folder,
    quant_spec,
    stored_dtype,
    weights_nbytes,
)
from mixchat.model.transformer import Transformer
from mixchat.paths import BUILTIN_DIR
from mixchat.quant.format import QuantSpec
from mixchat.quant.modules import meta_weight_bytes
from mixchat.tokenizer import Tokenizer, TokenizerError
from mixchat.tokenizer import load_tokenizer as open_tokenizer

if TYPE_CHECKING:
    from mixchat.distributed.launch import Pipeline


def builtin_model_path() -> Path | None:
    """The model shipped inside the package, if this install has it."""
    if (BUILTIN_DIR / "params.json").is_file():
        return BUILTIN_DIR
    return None


def resolve_model_path(path: str | Path | None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    builtin = builtin_model_path()
    if builtin is None:
        raise UserError("no --model given and this install has no built-in model; pass --model DIR")
    return builtin


def resolve_device(name: str) -> torch.device:
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but torch finds no CUDA device here; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device {name!r}: use cpu, cuda or auto")


def resolve_dtype(
    name: str, device: torch.device, checkpoint: Checkpoint | None = None, quantized: bool = False
) -> torch.dtype:
    """The activations' (and full-precision weights') dtype. "auto": bfloat16 on CUDA; on the CPU bfloat16
    for quantized weights (torch's int8/int4 CPU kernels take bf16, see exec/quant_cpu.py), else the
    checkpoint's own dtype where the CPU computes it natively (see `cpu_auto_dtype`), else float32."""
    if name == "auto":
        if device.type == "cuda" or quantized:
            return torch.bfloat16
        return cpu_auto_dtype(checkpoint) if checkpoint is not None else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return DTYPES[name]


# Up to this many parameters a model runs fastest in float32 through the CPU runner (cpu_runner.py), and its
# float32 copy is small: "auto" keeps those in float32 whatever they were saved in.
SMALL_CPU_MODEL = CPU_RUNNER_MAX_PARAMS


def cpu_auto_dtype(checkpoint: Checkpoint) -> torch.dtype:
    """The checkpoint's own dtype when it is bfloat16 and the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX):
    no float32 copy (half the memory of float32, and faster there); float32 otherwise, and for small models."""
    total, _ = checkpoint.args.param_counts()
    if total <= SMALL_CPU_MODEL:
        return torch.float32
    stored = stored_dtype(checkpoint)
    if stored == torch.bfloat16 and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 avx512_bf16 / amx_bf16, Arm bf16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


def free_memory(device: torch.device) -> int | None:
    """Bytes free for weights on `device`: MemAvailable on the CPU, the CUDA allocator's free memory on a GPU;
    None where it cannot be told. MIXCHAT_FREE_MEMORY (bytes) stands in for the reading (tests, or to
    override a wrong one)."""
    override = folder_from_env(FREE_MEMORY)
    if override:
        try:
            return int(float(override))
        except ValueError:
            raise UserError(f"MIXCHAT_FREE_MEMORY must be a number of bytes, got {override!r}") from None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, quant: QuantSpec | None = None) -> None:
    """Refuse, in one line and before any weight is read, a model whose weights do not fit the free memory.

    Better than being killed by the OOM killer halfway through loading; the line says what would help.
    """
    if quant is not None and quant.quantized:
        need = meta_weight_bytes(ckpt.args, quant, dtype.itemsize)
    else:
        need = weights_nbytes(ckpt, dtype)
    free = free_memory(device)
    if free is None or need <= free:
        return
    from mixchat.units import human_bytes

    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, str(dtype))
    smaller = " --dtype bfloat16 (half of float32)," if dtype == torch.float32 else ""
    raise UserError(
        f"the weights need {human_bytes(need)} in {name} but {device.type} has {human_bytes(free)} free; try"
        f"{smaller} --quant int8/int4 (weight-only quantization), or torchrun to spread the layers over devices"
    )


@dataclass
class Runtime:
    checkpoint: Checkpoint
    model: Transformer
    tokenizer: Tokenizer
    engine: Engine
    load_seconds: float
    quant: QuantSpec = field(default_factory=QuantSpec)  # how the weights are held (in the fingerprint)

    @property
    def name(self) -> str:
        if self.checkpoint.folder.resolve() == BUILTIN_DIR.resolve():
            return "built-in"
        return self.checkpoint.folder.name


def load_tokenizer(ckpt: Checkpoint, template: str | None = None) -> Tokenizer:
    """The checkpoint's tokenizer (``template`` overrides its chat-template version), checked against the model.

    A tokenizer with more ids than the model's embedding table would feed the model ids it has no row for;
    the reverse is normal (Mistral pads its tables) and the engine samples only ids the tokenizer knows.
    """
    if ckpt.tokenizer_file is None:
        raise LoadError(f"{ckpt.folder} has no tokenizer: expected tekken.json or tokenizer.model[.v1|.v3|.v7]")
    try:
        tok = open_tokenizer(ckpt.tokenizer_file, template)
    except TokenizerError as e:
        raise LoadError(str(e)) from None
    if tok.vocab_size > ckpt.args.vocab_size:
        raise LoadError(
            f"vocabulary mismatch: the tokenizer {ckpt.tokenizer_file.name} has {tok.vocab_size} tokens but the "
            f"model's vocab_size is {ckpt.args.vocab_size}; they do not belong together"
        )
    return tok


def load_runtime(
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_context: int | None = None,
    template: str | None = None,
    quant: QuantSpec | None = None,
) -> Runtime:
    """`quant` None loads the weights as stored; int8/int4 quantizes a full-precision checkpoint while loading."""
    start = time.perf_counter()
    dev = resolve_device(device)
    if chunk_size < 1:
        raise UserError("--chunk-size must be at least 1")
    ckpt = inspect_folder(resolve_model_path(model), max_context=max_context)
    spec = quant_spec(ckpt, quant)
    tok = load_tokenizer(ckpt, template)
    pipeline = current_pipeline()
    if pipeline is not None:  # rank 0 of a torchrun job: its own stage here, the other layers elsewhere
        from mixchat.distributed.driver import PipelineEngine

        stage_dtype = resolve_dtype(dtype, pipeline.device, ckpt, spec.quantized)
        stage_model = pipeline.lead(pipeline.stage_from_checkpoint(ckpt, stage_dtype, spec))
        engine: Engine = PipelineEngine(stage_model, tok, chunk_size=chunk_size)
        return Runtime(ckpt, stage_model, tok, engine, time.perf_counter() - start, spec)
    dt = resolve_dtype(dtype, dev, ckpt, spec.quantized)
    check_files(ckpt)
    check_memory(ckpt, dev, dt, spec)
    net = build_model(ckpt, dev, dt, spec)
    engine = Engine(net, tok, chunk_size=chunk_size)
    return Runtime(ckpt, net, tok, engine, time.perf_counter() - start, spec)


def current_pipeline() -> Pipeline | None:
    """The pipeline this process leads under torchrun, or None (without importing torch.distributed)."""
    from mixchat import distributed

    return distributed.current() if distributed.launched() else None
