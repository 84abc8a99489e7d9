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
from mixchat.loader import DTYPES, Checkpoint, LoadError, build_model, inspect_folder, quant_spec
from mixchat.model.transformer import Transformer
from mixchat.paths import BUILTIN_DIR
from mixchat.quant.format import QuantSpec
from mixchat.tokenizer import Tokenizer, TokenizerError

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


def resolve_dtype(name: str, device: torch.device, quantized: bool = False) -> torch.dtype:
    """The activations' (and full-precision weights') dtype. Quantized weights run with bf16 activations by
    default on the CPU too: torch's int8/int4 CPU kernels take bf16 (see exec/quant_cpu.py)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" or quantized else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return DTYPES[name]


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


def load_tokenizer(ckpt: Checkpoint) -> Tokenizer:
    if ckpt.tokenizer_file is None:
        raise LoadError(f"{ckpt.folder} has no tokenizer.model (or tokenizer.model.v1/.v3)")
    try:
        tok = Tokenizer(ckpt.tokenizer_file)
    except TokenizerError as e:
        raise LoadError(str(e)) from None
    if tok.vocab_size > ckpt.args.vocab_size:
        raise LoadError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {ckpt.args.vocab_size}: "
            "they do not belong together"
        )
    return tok


def load_runtime(
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_context: int | None = None,
    quant: QuantSpec | None = None,
) -> Runtime:
    """`quant` None loads the weights as stored; int8/int4 quantizes a full-precision checkpoint while loading."""
    start = time.perf_counter()
    dev = resolve_device(device)
    if chunk_size < 1:
        raise UserError("--chunk-size must be at least 1")
    ckpt = inspect_folder(resolve_model_path(model), max_context=max_context)
    spec = quant_spec(ckpt, quant)
    dt = resolve_dtype(dtype, dev, spec.quantized)
    tok = load_tokenizer(ckpt)
    pipeline = current_pipeline()
    if pipeline is not None:  # rank 0 of a torchrun job: its own stage here, the other layers elsewhere
        from mixchat.distributed.driver import PipelineEngine

        stage_dtype = resolve_dtype(dtype, pipeline.device, spec.quantized)
        stage_model = pipeline.lead(pipeline.stage_from_checkpoint(ckpt, stage_dtype, spec))
        engine: Engine = PipelineEngine(stage_model, tok, chunk_size=chunk_size)
        return Runtime(ckpt, stage_model, tok, engine, time.perf_counter() - start, spec)
    net = build_model(ckpt, dev, dt, spec)
    engine = Engine(net, tok, chunk_size=chunk_size)
    return Runtime(ckpt, net, tok, engine, time.perf_counter() - start, spec)


def current_pipeline() -> Pipeline | None:
    """The pipeline this process leads under torchrun, or None (without importing torch.distributed)."""
    from mixchat import distributed

    return distributed.current() if distributed.launched() else None
