"""Model hyper-parameters read from Mistral-native `params.json` or Hugging Face `config.json`, and written
as `config.json`.

Reading is honest: a field that would change the maths in a way this model does not implement (RoPE
scaling, attention biases, another activation, an unknown `model_type`) is refused with one line naming the
field, rather than ignored; a model that then runs with wrong numbers is worse than one that does not run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixchat.errors import ConfigError
from mixchat.model.args import ModelArgs, MoeArgs, Window

# Hugging Face model types whose decoder is this one (Ministral: per-layer windows via `layer_types`).
HF_MODEL_TYPES = ("mistral", "mixtral", "ministral")
_HF_LAYER_TYPES = ("full_attention", "sliding_attention")


def args_from_params(d: dict[str, Any]) -> ModelArgs:
    """From a Mistral-native `params.json` dictionary."""
    _refuse_unimplemented_params(d)
    with _fields_of("params.json"):
        dim = int(d["dim"])
        n_heads = int(d["n_heads"])
        moe = d.get("moe")
        return ModelArgs(
            dim=dim,
            n_layers=int(d["n_layers"]),
            head_dim=int(d.get("head_dim") or dim // n_heads),
            hidden_dim=int(d["hidden_dim"]),
            n_heads=n_heads,
            n_kv_heads=int(d.get("n_kv_heads", n_heads)),
            vocab_size=int(d["vocab_size"]),
            norm_eps=float(d.get("norm_eps", 1e-5)),
            rope_theta=float(d.get("rope_theta", 10000.0)),
            sliding_window=_window_field(d.get("sliding_window")),
            moe=MoeArgs(int(moe["num_experts"]), int(moe["num_experts_per_tok"])) if moe else None,
        )


def args_from_hf_config(d: dict[str, Any]) -> ModelArgs:
    """From a Hugging Face `config.json` of a Mistral, Mixtral or Ministral model."""
    _refuse_unimplemented_hf(d)
    with _fields_of("config.json"):
        dim = int(d["hidden_size"])
        n_heads = int(d["num_attention_heads"])
        n_layers = int(d["num_hidden_layers"])
        theta = d.get("rope_theta")
        if theta is None:
            theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        n_experts = d.get("num_local_experts")
        moe = None
        if n_experts:
            moe = MoeArgs(int(n_experts), int(d.get("num_experts_per_tok", 2)))
        return ModelArgs(
            dim=dim,
            n_layers=n_layers,
            head_dim=int(d.get("head_dim") or dim // n_heads),
            hidden_dim=int(d["intermediate_size"]),
            n_heads=n_heads,
            n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
            vocab_size=int(d["vocab_size"]),
            norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta),
            sliding_window=_hf_windows(d, n_layers),
            moe=moe,
        )


def hf_config(args: ModelArgs) -> dict[str, Any]:
    """The Hugging Face `config.json` of a model of this shape."""
    d: dict[str, Any] = {
        "architectures": ["MixtralForCausalLM" if args.moe else "MistralForCausalLM"],
        "model_type": "mixtral" if args.moe else "mistral",
        "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers,
        "head_dim": args.head_dim,
        "intermediate_size": args.hidden_dim,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "sliding_window": args.sliding_window,
        "max_position_embeddings": args.max_context,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if args.moe:
        d["num_local_experts"] = args.moe.num_experts
        d["num_experts_per_tok"] = args.moe.num_experts_per_tok
    if args.per_layer_windows:
        windows = args.layer_windows
        if args.moe is not None or len({w for w in windows if w is not None}) > 1:
            raise ConfigError("config.json can express per-layer windows only as one window and full layers")
        d["architectures"] = ["MinistralForCausalLM"]
        d["model_type"] = "ministral"
        d["sliding_window"] = next(w for w in windows if w is not None)
        d["layer_types"] = [_HF_LAYER_TYPES[w is not None] for w in windows]
    return d


@contextmanager
def _fields_of(filename: str) -> Iterator[None]:
    """Turn a missing or mistyped field of a config file into one ConfigError line naming the file."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{filename}: {e}") from None
    except KeyError as e:
        raise ConfigError(f"{filename} lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{filename} has a field of the wrong type ({e})") from None


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _window_field(v: Any) -> int | list[Window] | None:
    """params.json's `sliding_window`: null, one window, or a list of per-layer windows."""
    if isinstance(v, list):
        return [_opt_int(w) for w in v]
    return _opt_int(v)


def _hf_windows(d: dict[str, Any], n_layers: int) -> int | list[Window] | None:
    """config.json's windows: `sliding_window`, and per layer through `layer_types` (Ministral)."""
    window = _opt_int(d.get("sliding_window"))
    types = d.get("layer_types")
    if types is None or window is None:
        return window
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(f"config.json field 'layer_types' must list one type per layer ({n_layers})")
    unknown = sorted({t for t in types if t not in _HF_LAYER_TYPES})
    if unknown:
        raise ConfigError(
            f"config.json field 'layer_types' holds {unknown[0]!r}, which mixchat does not implement "
            f"(only {' and '.join(_HF_LAYER_TYPES)})"
        )
    return [window if t == "sliding_attention" else None for t in types]


def _refuse(filename: str, name: str, value: Any, why: str) -> None:
    raise ConfigError(f"{filename} field {name!r} = {json.dumps(value)[:80]} is not supported: {why}")


def _check_rope(filename: str, name: str, value: Any) -> None:
    """RoPE variants other than the plain one (linear, dynamic, yarn, llama3...) change every score."""
    if value is None:
        return
    if not isinstance(value, dict):
        _refuse(filename, name, value, "mixchat implements only unscaled rotary embeddings")
    kind = value.get("rope_type", value.get("type", "default"))
    if kind not in (None, "default"):
        _refuse(filename, name, value, "mixchat implements only unscaled rotary embeddings (rope_type default)")


def _refuse_unimplemented_hf(d: dict[str, Any]) -> None:
    kind = d.get("model_type")
    if kind is not None and kind not in HF_MODEL_TYPES:
        _refuse("config.json", "model_type", kind, f"mixchat runs {', '.join(HF_MODEL_TYPES)} models")
    _check_rope("config.json", "rope_scaling", d.get("rope_scaling"))
    _check_rope("config.json", "rope_parameters", d.get("rope_parameters"))
    for name in ("attention_bias", "mlp_bias"):
        if d.get(name):
            _refuse("config.json", name, d[name], "mixchat's projections have no bias")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        _refuse("config.json", "hidden_act", act, "mixchat's feed-forward is SwiGLU (silu)")
    if d.get("use_sliding_window") is False and d.get("sliding_window") is not None:
        _refuse("config.json", "use_sliding_window", False, "ambiguous with a sliding_window set")


def _refuse_unimplemented_params(d: dict[str, Any]) -> None:
    for name in ("rope_scaling", "yarn", "llama_4_scaling"):
        if d.get(name) is not None:
            _refuse("params.json", name, d[name], "mixchat implements only unscaled rotary embeddings")
    for name in ("attention_bias", "bias", "mlp_bias"):
        if d.get(name):
            _refuse("params.json", name, d[name], "mixchat's projections have no bias")


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path.name} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} must hold a JSON object")
    return data
