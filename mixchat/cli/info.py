"""`mixchat info`: what a model is, without loading its weights."""

from __future__ import annotations

import argparse
import json

import torch
from safetensors import safe_open

from mixchat.cli.common import add_quant_options, add_template_option, quant_from_args
from mixchat.loader import inspect_folder, quant_spec, weights_nbytes
from mixchat.quant.modules import meta_weight_bytes
from mixchat.runtime import free_memory, load_tokenizer, resolve_dtype, resolve_model_path
from mixchat.units import human_bytes

DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="summarise a model: shape, parameters, cache size, tokenizer",
        description="Summarise a model folder from its config and file headers (weights are not loaded).",
    )
    p.add_argument("--model", metavar="DIR", help="model folder (default: the built-in model)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_template_option(p)
    add_quant_options(p)
    p.set_defaults(func=run)


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}P"


def run(args: argparse.Namespace) -> int:
    ckpt = inspect_folder(resolve_model_path(args.model))
    spec = quant_spec(ckpt, quant_from_args(args))
    a = ckpt.args
    tok = load_tokenizer(ckpt, args.template)
    with safe_open(str(ckpt.weight_files[0]), framework="pt") as f:
        kinds = [f.get_slice(name).get_dtype() for name in f.keys()]  # noqa: SIM118 - safe_open has no __iter__
    stored = next((k for k in kinds if k in ("F32", "BF16", "F16")), kinds[0])
    elem = DTYPE_BYTES.get(stored, 2)
    total, active = a.param_counts()
    per_tok = a.kv_bytes_per_token(elem)
    window = a.sliding_window
    full_bytes = a.kv_bytes_full(elem)
    if isinstance(window, list):
        smallest, largest = a.windows_summary
        window_text = (
            f"per layer, {smallest} tokens to {f'{largest} tokens' if largest else 'full attention'} "
            f"({', '.join(str(w or 'full') for w in a.layer_windows)})"
        )
    else:
        window_text = f"{window} tokens" if window else f"none (full attention, cache {a.cache_capacity})"
    cpu = torch.device("cpu")
    cpu_dtype = resolve_dtype("auto", cpu, ckpt)
    cpu_bytes = weights_nbytes(ckpt, cpu_dtype)
    free = free_memory(cpu)
    summary = {
        "folder": str(ckpt.folder),
        "layout": "Mistral native" if ckpt.layout == "mistral" else "Hugging Face",
        "architecture": "Mixtral (sparse MoE)" if a.moe else "Mistral (dense)",
        "dim": a.dim,
        "n_layers": a.n_layers,
        "n_heads": a.n_heads,
        "n_kv_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "hidden_dim": a.hidden_dim,
        "vocab_size": a.vocab_size,
        "experts": a.moe.num_experts if a.moe else None,
        "experts_per_token": a.moe.num_experts_per_tok if a.moe else None,
        "rope_theta": a.rope_theta,
        "sliding_window": window,
        "params_total": total,
        "params_active_per_token": active,
        "weights_dtype": stored,
        "cpu_dtype_auto": str(cpu_dtype).removeprefix("torch."),
        "cpu_weights_bytes": cpu_bytes,
        "cpu_free_bytes": free,
        "quantization": ckpt.quant.label if ckpt.quant else "none",
        "weight_file_bytes": sum(p.stat().st_size for p in ckpt.weight_files),
        "loaded_as": spec.label,
        "loaded_weight_bytes": meta_weight_bytes(a, spec, DTYPE_BYTES.get(stored, 2)),
        "kv_cache_bytes_per_token": per_tok,
        "kv_cache_bytes_full_window": full_bytes,
        "cache_slots": a.cache_capacity,
        "tokenizer": ckpt.tokenizer_file.name if ckpt.tokenizer_file else None,
        "tokenizer_vocab": tok.vocab_size,
        "chat_template": tok.version,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("model", f"{ckpt.folder}  ({summary['layout']} layout)"),
        ("architecture", summary["architecture"]),
        ("layers × dim", f"{a.n_layers} × {a.dim}  (ffn hidden {a.hidden_dim})"),
        (
            "attention",
            f"{a.n_heads} query heads, {a.n_kv_heads} KV heads (GQA), head_dim {a.head_dim}, RoPE θ={a.rope_theta:g}",
        ),
        ("experts", f"{a.moe.num_experts}, top-{a.moe.num_experts_per_tok} per token" if a.moe else "dense"),
        ("parameters", f"{_human(total)} total, {_human(active)} active per token"),
        (
            "weights",
            f"{summary['quantization']}, {human_bytes(summary['weight_file_bytes'])} on disk; "
            f"as {spec.label}: {human_bytes(summary['loaded_weight_bytes'])} in memory",
        ),
        ("sliding window", window_text),
        (
            "KV cache",
            f"{human_bytes(per_tok)} per token ({stored}), {human_bytes(full_bytes)} for "
            f"{'full windows' if window else 'the full context'}",
        ),
        (
            "on the CPU",
            f"{summary['cpu_dtype_auto']} by default, {human_bytes(cpu_bytes)} of weights"
            + (f" ({human_bytes(free)} free)" if free is not None else ""),
        ),
        ("vocabulary", f"{a.vocab_size} (tokenizer {tok.vocab_size}, {summary['tokenizer']})"),
        ("chat template", tok.version),
    ]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)
    return 0
