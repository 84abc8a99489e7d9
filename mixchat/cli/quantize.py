"""`mixchat quantize`: write a quantized checkpoint that `--model` loads directly (safetensors + params.json)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mixchat.cli.common import quant_from_args, stderr_status
from mixchat.loader import DTYPES, build_model, inspect_folder, quant_spec
from mixchat.quant.modules import weight_bytes
from mixchat.quant.store import stored_state_dict
from mixchat.runtime import UserError, resolve_model_path
from mixchat.units import human_bytes

DESCRIPTION = """\
Quantize a model's weights (attention projections, experts, dense FFNs, output head; embeddings, norms and
the router gate stay full precision) and write them as a Mistral-native folder: consolidated.safetensors
plus params.json with a "quantization" entry, and the tokenizer. The checkpoint is read tensor by tensor,
so memory peaks near the quantized model's size. The stored layout is described in docs/QUANTIZATION.md."""

SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write an int8 or int4 copy of a model folder", description=DESCRIPTION)
    p.add_argument("--model", metavar="DIR", help="model folder to read (default: the built-in model)")
    p.add_argument("--out", metavar="DIR", required=True, help="folder to write (new or empty)")
    p.add_argument("--quant", required=True, choices=["int8", "int4"], help="the format to write")
    p.add_argument("--group-size", type=int, metavar="G", help="int4 group size: 32, 64 or 128 (default 128)")
    p.set_defaults(func=run)


def stored_dtype(files: list[Path]) -> torch.dtype:
    """The dtype of a checkpoint's full-precision tensors (the first floating one found)."""
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                kind = f.get_slice(name).get_dtype()
                if kind in SAFETENSORS_DTYPES:
                    return DTYPES[SAFETENSORS_DTYPES[kind]]
    return torch.bfloat16


def run(args: argparse.Namespace) -> int:
    spec = quant_from_args(args)
    assert spec is not None
    ckpt = inspect_folder(resolve_model_path(args.model))
    spec = quant_spec(ckpt, spec)
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder")
    if out.resolve() == ckpt.folder.resolve():
        raise UserError("--out must be another folder than --model")
    dtype = stored_dtype(ckpt.weight_files)
    with stderr_status(f"Quantizing to {spec.label}…"):
        model = build_model(ckpt, "cpu", dtype, spec)
        tensors = stored_state_dict(model)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "quantization": json.dumps(spec.to_json())}
    save_file(tensors, str(out / "consolidated.safetensors"), metadata=meta)
    params = ckpt.args.to_params_json()
    params["quantization"] = spec.to_json()
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    if ckpt.tokenizer_file is not None:
        shutil.copy2(ckpt.tokenizer_file, out / ckpt.tokenizer_file.name)
    size = (out / "consolidated.safetensors").stat().st_size
    print(f"wrote {out} ({spec.label}, {human_bytes(size)}; weights {human_bytes(weight_bytes(model) or 0)} in memory)")
    return 0
