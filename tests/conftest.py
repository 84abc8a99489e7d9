"""Shared fixtures for the engine tests: small random models, fp32 on the CPU.

Weights use a large std (0.2) so that logits are O(1) and a wrong window, a wrong expert or a wrong
weight shows up as a visible difference rather than disappearing under float noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mixchat.cache import RollingCache
from mixchat.flags import flags
from mixchat.loader import build_model, inspect_folder, random_model, save_native
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.layout import fresh_layout
from mixchat.model.transformer import Transformer


@pytest.fixture(autouse=True)
def _fresh_flags() -> Iterator[None]:
    """`flags()` reads MIXCHAT_* once per process; a test that sets one with monkeypatch gets it read anew."""
    flags.cache_clear()
    yield
    flags.cache_clear()


W = 16  # sliding window of the windowed test models
VOCAB = 300
STD = 0.2


def make_args(kind: str, window: int | None = W, max_context: int = 32768) -> ModelArgs:
    """'mixtral' (8 experts, top-2), 'mistral' (dense) or 'full' (Mixtral without a window)."""
    moe = MoeArgs(num_experts=8, num_experts_per_tok=2) if kind in ("mixtral", "full") else None
    return ModelArgs(
        dim=64,
        n_layers=3,
        head_dim=16,
        hidden_dim=128,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=VOCAB,
        norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=None if kind == "full" else window,
        moe=moe,
        max_context=max_context,
    )


def make_model(kind: str, window: int | None = W, seed: int = 0, max_context: int = 32768) -> Transformer:
    """A mixchat model with seeded random weights; the same seed gives the same weights for any window."""
    return random_model(make_args(kind, window, max_context), seed=seed, std=STD)


def random_tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    # Avoid 0-2 (pad/bos/eos in the HF configs) so nothing special-cases them.
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


def graph_step_inputs(cache: RollingCache, rows: list[int], tokens: list[int]) -> torch.Tensor:
    """[4, B] int64 for `GraphDecoder._step`: tokens, positions, flat slots, live keys of `rows`' next token,
    worked out here from the cache's counts rather than read from its plan."""
    C, S = cache.capacity, cache.slots
    seen = [cache.seen[r] for r in rows]
    return torch.tensor([
        tokens, seen, [r * S + p % C for r, p in zip(rows, seen, strict=True)], [min(p + 1, C) for p in seen],
    ])  # fmt: skip


@torch.inference_mode()
def one_pass_logits(model: Transformer, tokens: list[int], window: int | str | None = "model") -> torch.Tensor:
    """[T, V] logits of one cache-free pass (the reference for chunked/packed/cached runs).

    `window` overrides the model's sliding window for this pass (None = full attention).
    """
    w = model.args.sliding_window if window == "model" else window
    assert w is None or isinstance(w, int)
    layout = fresh_layout([len(tokens)], w, "cpu")
    return model(torch.tensor(tokens), layout)


# ---- Hugging Face (transformers) side --------------------------------------------------------------------
def hf_config(args: ModelArgs, **extra: Any) -> Any:
    """A transformers config equal to `args` (eager attention, untied embeddings, initializer_range=STD)."""
    import transformers

    common = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        sliding_window=args.sliding_window,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        max_position_embeddings=4096,
        initializer_range=STD,
        tie_word_embeddings=False,
        attn_implementation="eager",
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    common.update(extra)
    if args.moe is not None:
        return transformers.MixtralConfig(
            num_local_experts=args.moe.num_experts, num_experts_per_tok=args.moe.num_experts_per_tok, **common
        )
    return transformers.MistralConfig(**common)


def make_hf_model(args: ModelArgs, seed: int = 0) -> Any:
    """transformers' MixtralForCausalLM / MistralForCausalLM with seeded random weights (norms not all 1)."""
    import transformers

    cfg = hf_config(args)
    torch.manual_seed(seed)
    cls = transformers.MixtralForCausalLM if args.moe is not None else transformers.MistralForCausalLM
    model = cls(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return model


def save_hf_pretrained(hf_model: Any, folder: Path) -> Path:
    hf_model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def load_mixchat(folder: Path, max_context: int | None = None) -> Transformer:
    return build_model(inspect_folder(folder, max_context=max_context), "cpu", torch.float32)


def save_native_layout(model: Transformer, folder: Path) -> Path:
    return save_native(model, folder)


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread for the tiny test models: faster, and no spin-waiting when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mixtral_args() -> ModelArgs:
    return make_args("mixtral")


@pytest.fixture(scope="session")
def mistral_args() -> ModelArgs:
    return make_args("mistral")


@pytest.fixture(scope="session")
def full_args() -> ModelArgs:
    return make_args("full")


@pytest.fixture(scope="session")
def mixtral_model() -> Transformer:
    return make_model("mixtral")


@pytest.fixture(scope="session")
def mistral_model() -> Transformer:
    return make_model("mistral")


@pytest.fixture(scope="session")
def full_model() -> Transformer:
    return make_model("full", max_context=512)


@pytest.fixture(params=["mixtral", "mistral", "full"])
def any_model(request: pytest.FixtureRequest) -> Transformer:
    return make_model(request.param, max_context=512)
