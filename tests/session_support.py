"""Helpers for the session and chat tests: tiny random Mixtral checkpoints with a real Mistral tokenizer.

The tokenizer is mistral-common's `tokenizer.model.v1` (32000 pieces), so the models have a 32000-word
vocabulary and otherwise tiny dimensions. Weights use std 0.2 (as in conftest) so logits are O(1) and a
wrong cache shows up as a visible difference.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from mixchat.loader import random_model, save_native
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.layout import fresh_layout
from mixchat.model.transformer import Transformer
from mixchat.runtime import Runtime, load_runtime

W = 16
REPO = Path(__file__).resolve().parent.parent


def tokenizer_v1() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def tiny_args(window: int | None = W, n_layers: int = 2) -> ModelArgs:
    return ModelArgs(
        dim=64,
        n_layers=n_layers,
        head_dim=16,
        hidden_dim=64,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=32000,
        sliding_window=window,
        moe=MoeArgs(num_experts=8, num_experts_per_tok=2),
    )


def make_checkpoint(folder: Path, seed: int = 0, window: int | None = W) -> Path:
    """A Mistral-native model folder: params.json, consolidated.safetensors, tokenizer.model.v1."""
    if not (folder / "params.json").is_file():
        save_native(random_model(tiny_args(window), seed=seed, std=0.2), folder)
        shutil.copy(tokenizer_v1(), folder / "tokenizer.model.v1")
    return folder


def runtime(folder: Path) -> Runtime:
    return load_runtime(folder, device="cpu", dtype="float32")


@torch.inference_mode()
def reference_logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    """[T, V] logits of one cache-free pass over all ids, with the model's own window rule."""
    layout = fresh_layout([len(ids)], model.args.layout_window, "cpu")
    return model(torch.tensor(ids), layout)


class ForwardRecorder:
    """Wraps engine.forward: counts the tokens fed and keeps (position, logits) of every pass.

    With `only`, passes on other caches are ignored.

    After a pass the cache has seen s tokens, so the returned logits are those of position s - 1: the
    independent reference is row s - 1 of one pre-fill of the whole conversation.
    """

    def __init__(self, engine, only=None) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.original: Callable = engine.forward
        self.tokens = 0
        self.passes: list[tuple[int, torch.Tensor]] = []

        def forward(cache, rows, chunks, router_out=None):  # type: ignore[no-untyped-def]
            out = self.original(cache, rows, chunks, router_out)
            if only is not None and cache is not only:
                return out  # e.g. next_token_logits' scratch copy
            self.tokens += sum(len(c) for c in chunks)
            self.passes.append((cache.seen[rows[0]], out[0].clone()))
            return out

        engine.forward = forward

    def remove(self) -> None:
        del self.engine.forward  # back to the class method


def drain(events: Iterator) -> str:
    """Consume a turn's events; return the streamed text."""
    return "".join(getattr(ev, "text", "") for ev in events)
