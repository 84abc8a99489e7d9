"""Engine and conversation runs that tests/test_pipeline.py does twice: in one process, and under torchrun.

Each scenario returns a flat dict of tensors (token ids, routing, the logits of every forward pass) so the
two runs can be compared exactly and to float tolerance. `pipeline_worker.py` runs them on rank 0 of a
torchrun job and writes the dict with safetensors.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any

import torch

from mixchat.distributed.partition import micro_batches
from mixchat.engine import Engine, PrefillProgressed, SequenceFinished, TokenGenerated
from mixchat.exec.executors import ModuleExecutor
from mixchat.model.layers import Routing
from mixchat.runtime import Runtime, load_runtime
from mixchat.sampling import SamplingSettings
from mixchat.session import ChatSettings, Conversation, ConversationStore

PROMPTS = [
    [1, 415, 2936, 9060, 285, 1142, 10575, 754, 21, 3],
    [1, 22557],
    [1, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26],
]
TURNS = ["Hello there, how are you today?", "Tell me about the sea", "And the mountains?", "Thanks, bye"]
CHUNK = 5


def runtime(ckpt: Path) -> Runtime:
    # Pipeline stages run the model's module path; the one-process reference runs the same arithmetic, so
    # the comparison isolates what the pipeline adds. (The lean CPU executor, which folds norm weights into
    # the matrices and rounds differently at the 1e-5 level, is checked against the module path elsewhere.)
    os.environ["MIXCHAT_CPU_RUNNER"] = "0"
    return load_runtime(ckpt, device="cpu", dtype="float32", chunk_size=CHUNK)


class Recorder:
    """Keeps the logits of every forward pass the engine runs, in the order the passes were issued.

    Pre-fill passes are recorded when collected: a pipeline's engine starts them (`start_pass`) without
    going through `forward`, and an engine in one process runs `forward` inside `start_pass`, recorded once."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.logits: list[torch.Tensor] = []
        self.starting = False
        forward, start_pass = engine.forward, engine.start_pass

        def forward_(cache, rows, chunks, router_out=None):  # type: ignore[no-untyped-def]
            out = forward(cache, rows, chunks, router_out)
            if not self.starting:
                self.logits.append(out.detach().clone())
            return out

        def start_pass_(cache, rows, chunks, router_out=None):  # type: ignore[no-untyped-def]
            self.starting = True
            try:
                collect = start_pass(cache, rows, chunks, router_out)
            finally:
                self.starting = False

            def collect_():  # type: ignore[no-untyped-def]
                out = collect()
                self.logits.append(out.detach().clone())
                return out

            return collect_

        engine.forward = forward_
        engine.start_pass = start_pass_

    def remove(self) -> None:
        del self.engine.forward
        del self.engine.start_pass


# Four sequences for micro-batches of two: 2, 4, 6 and 3 pre-fill chunks of CHUNK tokens, so the passes'
# groups change as the shorter ones finish (a group of one sequence too), then decode in two groups.
FOUR = [
    [1, *range(400, 416)],
    [1, 733, 28705],
    [1, *range(900, 925)],
    [1, 5, 6, 7, 8, 9, 10, 11, 12, 13],
]


def generate_packed(rt: Runtime, tag: str, prompts: list[list[int]] = PROMPTS) -> dict[str, torch.Tensor]:
    """Prompts of different lengths packed into shared passes, greedy, with the routing trace."""
    return generate_with(rt.engine, tag, prompts)


def generate_with(engine: Any, tag: str, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    rec = Recorder(engine)
    out: dict[str, torch.Tensor] = {}
    experts: dict[int, list[list[list[int]]]] = {i: [] for i in range(len(prompts))}
    try:
        for ev in engine.generate(prompts, SamplingSettings(temperature=0.0, max_tokens=7), trace=True):
            if isinstance(ev, TokenGenerated) and ev.routing is not None:
                experts[ev.seq].append(ev.routing.experts)
            elif isinstance(ev, SequenceFinished):
                out[f"{tag}.ids.{ev.seq}"] = torch.tensor(ev.ids)
    finally:
        rec.remove()
    for i, e in experts.items():
        out[f"{tag}.experts.{i}"] = torch.tensor(e)
    for j, x in enumerate(rec.logits):
        out[f"{tag}.logits.{j}"] = x
    return out


class SplitPasses:
    """A one-process model whose every pass is cut into micro-batches as a pipeline's rank 0 cuts it
    (`PipelineModel.start`): contiguous groups of the pass's sequences, each planned on the cache as a pass
    of its own. The reference for micro-batched runs: the same passes, so the same kernel shapes. (Cut
    otherwise, a float32 pass rounds differently at the 1e-5 level: the matmuls see other row counts.)"""

    def __init__(self, model: Any, m: int) -> None:
        self.model = model
        self.m = m

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, tokens, layout, cache, router_out=None, last_only=False):  # type: ignore[no-untyped-def]
        rows, n = list(layout.row_ids), len(layout.seqlens)
        starts = [0, *itertools.accumulate(layout.seqlens)]
        outs, traces = [], []
        for g in micro_batches(n, self.m):
            sub = cache.plan(layout.seqlens[g.start : g.stop], rows[g.start : g.stop])
            r: list[Routing] | None = [] if router_out is not None else None
            outs.append(self.model(tokens[starts[g.start] : starts[g.stop]], sub, cache, r, last_only))
            traces.append(r)
        if router_out is not None:
            for layer in zip(*traces, strict=True):
                router_out.append(Routing(*(torch.cat(parts) for parts in zip(*layer, strict=True))))
        return torch.cat(outs)


def generate_split(rt: Runtime, tag: str, m: int, prompts: list[list[int]] = FOUR) -> dict[str, torch.Tensor]:
    """`generate_packed` in one process with every pass cut into `m` micro-batches (`SplitPasses`)."""
    split = SplitPasses(rt.model, m)
    executor = ModuleExecutor(split)
    engine = Engine(split, rt.engine.tokenizer, chunk_size=CHUNK, eos_id=rt.engine.eos_id, executor=executor)
    return generate_with(engine, tag, prompts)


def _turn(conv: Conversation, text: str, tag: str, out: dict[str, torch.Tensor]) -> None:
    rec = Recorder(conv.engine)
    try:
        for _ in conv.send(text):
            pass
    finally:
        rec.remove()
    for j, x in enumerate(rec.logits):
        out[f"{tag}.logits.{j}"] = x
    out[f"{tag}.ids"] = torch.tensor(conv.ids)
    assert conv.last is not None
    out[f"{tag}.experts"] = torch.tensor([r.experts for r in conv.last.routing])
    out[f"{tag}.next"] = conv.next_token_logits()  # snapshot + restore of the whole cache


def settings() -> ChatSettings:
    return ChatSettings(temperature=0.0, max_tokens=6, chunk_size=CHUNK)


def conversation(rt: Runtime, data: Path, save_as: str, tag: str) -> dict[str, torch.Tensor]:
    """Four turns; saved as `save_as` after the second."""
    out: dict[str, torch.Tensor] = {}
    conv = Conversation.from_runtime(rt, settings())
    store = ConversationStore(data)
    for i, text in enumerate(TURNS):
        _turn(conv, text, f"{tag}.turn{i}", out)
        if i == 1:
            store.save(conv, save_as)
    return out


def resumed(rt: Runtime, data: Path, name: str, tag: str) -> dict[str, torch.Tensor]:
    """Turns three and four of a conversation saved after turn two (by a run with another rank count)."""
    loaded = ConversationStore(data).load_for(rt, name)
    assert loaded.problem is None, loaded.problem
    out: dict[str, torch.Tensor] = {}
    for i, text in enumerate(TURNS[2:], start=2):
        _turn(loaded.conversation, text, f"{tag}.turn{i}", out)
    return out


def cancelled_prefill(rt: Runtime, tag: str) -> dict[str, torch.Tensor]:
    """A long first message cancelled at its first pre-fill progress (a pipeline has more chunks in flight
    then, which it finishes before undoing the turn), then a turn sent as usual."""
    conv = Conversation.from_runtime(rt, settings())
    cancel = threading.Event()
    for ev in conv.send(" ".join(TURNS * 3), cancel):
        if isinstance(ev, PrefillProgressed):
            cancel.set()
    out = {f"{tag}.cancelled.ids": torch.tensor(conv.ids, dtype=torch.long)}
    _turn(conv, TURNS[0], f"{tag}.after", out)
    return out
