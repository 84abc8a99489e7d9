"""One fixed schedule of passes that every executor is run through (tests/test_executors.py).

It covers what differs between execution paths: packed pre-fill chunks of uneven sequences, a rolling
buffer that wraps (window 16, prompts up to 41 tokens), later chunks over cached keys, packed decode over
every row and over a subset of rows in a new order, and the routing trace of each pass. The tokens are
fixed (not sampled), so every executor sees the same input whatever its logits.
"""

from __future__ import annotations

from typing import Any

import torch

from mixchat.engine import LastTokenRoutes
from mixchat.model.layers import Routing

PROMPTS = (41, 7, 23)  # tokens per row; window 16, so rows 0 and 2 wrap their buffers
CHUNK = 6
VOCAB_USED = 1000  # token ids drawn below this


def _tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB_USED, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _record(out: dict[str, torch.Tensor], tag: str, logits: torch.Tensor, routing: list[Routing]) -> None:
    out[f"{tag}.logits"] = logits.detach().float().cpu().clone()
    if routing:
        out[f"{tag}.experts"] = torch.stack([r.experts for r in routing]).cpu().clone()  # [L, B, k]
        out[f"{tag}.weights"] = torch.stack([r.weights for r in routing]).float().cpu().clone()


@torch.inference_mode()
def run_schedule(engine: Any) -> dict[str, torch.Tensor]:
    """Drive `engine.forward` through the schedule; returns every pass's logits and routing by name."""
    out: dict[str, torch.Tensor] = {}
    cache = engine.new_cache(batch=len(PROMPTS))
    prompts = [_tokens(n, seed=i) for i, n in enumerate(PROMPTS)]
    offsets = [0] * len(prompts)
    step = 0
    while any(o < len(p) for o, p in zip(offsets, prompts, strict=True)):  # packed pre-fill in chunks
        rows = [i for i, p in enumerate(prompts) if offsets[i] < len(p)]
        chunks = [prompts[i][offsets[i] : offsets[i] + CHUNK] for i in rows]
        routing = LastTokenRoutes()
        _record(out, f"prefill{step}", engine.forward(cache, rows, chunks, routing), routing)
        for i, c in zip(rows, chunks, strict=True):
            offsets[i] += len(c)
        step += 1
    feed = _tokens(64, seed=99)
    for s in range(6):  # packed decode over every row
        routing_d: list[Routing] = []
        logits = engine.forward(cache, [0, 1, 2], [[feed[3 * s + j]] for j in range(3)], routing_d)
        _record(out, f"decode{s}", logits, routing_d)
    routing = LastTokenRoutes()  # a later chunk on a subset of rows, in a new order
    _record(out, "later", engine.forward(cache, [2, 0], [feed[20:25], feed[25:34]], routing), routing)
    for s in range(3):  # decode over a subset of rows
        routing_d = []
        _record(
            out, f"subset{s}", engine.forward(cache, [1, 2], [[feed[40 + s]], [feed[50 + s]]], routing_d), routing_d
        )
    return out
