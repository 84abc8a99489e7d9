"""Named model shapes for benchmarks: real architectures with random weights made on the target device."""

from __future__ import annotations

import json

import torch

from mixchat.checkpoint_config import args_from_params
from mixchat.errors import UserError
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.stage import StageModel, StagePart
from mixchat.model.transformer import Transformer
from mixchat.paths import BUILTIN_DIR
from mixchat.quant.format import QuantSpec
from mixchat.quant.load import fill_random_quantized
from mixchat.quant.modules import quantize_modules


def named_shape(name: str) -> ModelArgs:
    if name == "mixtral-8x7b":
        return ModelArgs(
            dim=4096,
            n_layers=32,
            head_dim=128,
            hidden_dim=14336,
            n_heads=32,
            n_kv_heads=8,
            vocab_size=32000,
            rope_theta=1e6,
            sliding_window=None,
            moe=MoeArgs(8, 2),
        )
    if name == "mistral-7b":
        return ModelArgs(
            dim=4096,
            n_layers=32,
            head_dim=128,
            hidden_dim=14336,
            n_heads=32,
            n_kv_heads=8,
            vocab_size=32000,
            rope_theta=10000.0,
            sliding_window=4096,
        )
    if name == "mixtral-0.8b":  # the CPU comparison shape of issue 18 (llama.cpp's 0.8B random Mixtral)
        return ModelArgs(
            dim=1024,
            n_layers=8,
            head_dim=128,
            hidden_dim=3584,
            n_heads=8,
            n_kv_heads=2,
            vocab_size=32000,
            rope_theta=1e6,
            sliding_window=None,
            moe=MoeArgs(8, 2),
        )
    if name == "builtin":
        return args_from_params(json.loads((BUILTIN_DIR / "params.json").read_text()))
    raise UserError(f"unknown shape {name!r}: use {', '.join(SHAPES)}")


SHAPES = ("builtin", "mixtral-8x7b", "mistral-7b", "mixtral-0.8b")


def random_model_on(
    args: ModelArgs, device: torch.device, dtype: torch.dtype, seed: int = 0, quant: QuantSpec | None = None
) -> Transformer:
    """Random weights drawn directly on `device` in `dtype`: a 47 B-parameter shape never touches host RAM.
    With a quantized `quant`, each matrix is drawn and quantized one at a time (`fill_random_quantized`)."""
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to(dtype)
    quantize_modules(model, quant or QuantSpec())
    model = model.to_empty(device=device)
    _fill_random(model, device, seed, quant)
    return model.eval().requires_grad_(False)


def random_stage_on(
    args: ModelArgs,
    part: StagePart,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    quant: QuantSpec | None = None,
) -> StageModel:
    """One pipeline stage of a named shape with random weights, allocated and drawn on `device`: a rank
    holds only its own layers (and the embeddings or head where it owns them)."""
    with torch.device("meta"):
        model = StageModel(args, part)
    model = model.to(dtype)
    quantize_modules(model, quant or QuantSpec())
    model = model.to_empty(device=device)
    _fill_random(model, device, seed, quant)
    return model.eval().requires_grad_(False)


def _fill_random(model: torch.nn.Module, device: torch.device, seed: int, quant: QuantSpec | None = None) -> None:
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    if quant is not None and quant.quantized:
        fill_random_quantized(model, quant, gen)
