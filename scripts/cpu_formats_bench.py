"""Decode speed of several weight formats of one random shape, in alternating rounds in one process.

    OMP_NUM_THREADS=1 python scripts/cpu_formats_bench.py --shape mixtral-0.8b --formats f32-today,bf16

On a shared machine a slow spell lasts seconds; separate processes run at different times catch different
spells, alternating rounds in one process catch them on both sides, so the ratios are what to read
(`mixchat bench --compare` alternates for the same reason). Formats: `f32-today` (float32 through the
module forward with no CPU swaps: the CPU path before issue 18), `f32`, `bf16`, `int8`, `int4` (each
through the executor `mixchat` chooses). Peak memory is not measured here (one process holds every
format): `mixchat bench`, one format per process, reports it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mixchat.engine import Engine
from mixchat.exec.executors import ModuleExecutor
from mixchat.quant.format import QuantSpec, make_spec
from mixchat.shapes import named_shape, random_model_on


def make(fmt: str, shape: str) -> Engine:
    args = named_shape(shape)
    args.max_context = 4096
    dtype = torch.float32 if fmt.startswith("f32") else torch.bfloat16
    spec = make_spec(fmt) if fmt in ("int8", "int4") else QuantSpec()
    model = random_model_on(args, torch.device("cpu"), dtype, seed=0, quant=spec)
    if fmt == "f32-today":
        return Engine(model, None, eos_id=-1, executor=ModuleExecutor(model))
    return Engine(model, None, eos_id=-1)


@torch.inference_mode()
def round_tps(engine: Engine, prompt: list[int], steps: int) -> float:
    cache = engine.new_cache(batch=1)
    logits = None
    for item in engine.prefill(cache, [0], [prompt]):
        if isinstance(item, torch.Tensor):
            logits = item
    assert logits is not None
    nxt = int(logits.argmax(-1)[0])
    engine.forward(cache, [0], [[nxt]])  # the first step is timed apart, as in bench
    t = time.perf_counter()
    for _ in range(steps):
        nxt = int(engine.forward(cache, [0], [[nxt]]).argmax(-1)[0])
    return steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="mixtral-0.8b")
    p.add_argument("--formats", default="f32-today,bf16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=16)
    a = p.parse_args()
    formats = a.formats.split(",")
    engines = {f: make(f, a.shape) for f in formats}
    prompt = torch.randint(3, 32000, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    rates: dict[str, list[float]] = {f: [] for f in formats}
    for f in formats:
        round_tps(engines[f], prompt, 2)  # warm-up
    for _ in range(a.rounds):
        for f in formats:
            rates[f].append(round_tps(engines[f], prompt, a.steps))
    med = {f: statistics.median(r) for f, r in rates.items()}
    out = {
        "shape": a.shape,
        "threads": torch.get_num_threads(),
        "steps": a.steps,
        "rounds": a.rounds,
        "decode_tokens_per_s": {f: {"median": med[f], "all": rates[f]} for f in formats},
        "ratio_to_first": {f: med[f] / med[formats[0]] for f in formats},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
