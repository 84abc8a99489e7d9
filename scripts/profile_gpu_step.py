"""Where a GPU decode step's time goes, kernel by kernel (CUDA only).

    python scripts/profile_gpu_step.py [--shape mixtral-8x7b] [--quant int8] [--batch 1] [--steps 16]

Builds the shape's random weights as `mixchat bench` does, pre-fills a 128-token prompt per row, warms the
captured decode step, then records `--steps` decode steps with torch's profiler (kernels inside CUDA graph
replays are recorded one by one). Prints the wall time per step, the GPU time per step and how many kernels
run per step, then the kernels grouped by name with their share of the GPU time, so the matmuls can be told
from the small kernels between them.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from mixchat.engine import Engine
from mixchat.quant.format import QuantSpec, spec_from_options
from mixchat.shapes import named_shape, random_model_on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="mixtral-8x7b")
    ap.add_argument("--quant", default=None, choices=["int8", "int4"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--top", type=int, default=24, help="kernel names listed")
    args = ap.parse_args()
    spec = spec_from_options(args.quant, None) or QuantSpec()
    model = random_model_on(named_shape(args.shape), torch.device("cuda"), torch.bfloat16, 0, spec)
    engine = Engine(model, None, chunk_size=1024, eos_id=-1)
    rows = list(range(args.batch))
    cache = engine.new_cache(batch=args.batch)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, model.args.vocab_size, (128,), generator=gen).tolist() for _ in rows]
    for _ in engine.prefill(cache, rows, prompts):
        pass
    tokens = [[5] for _ in rows]

    def steps(n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            engine.forward(cache, rows, tokens).argmax(-1).tolist()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    steps(4)  # captures the graph and settles the allocator
    wall = steps(args.steps)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        steps(args.steps)
    by_name: dict[str, list[float]] = defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            by_name[ev.name].append(ev.device_time)  # microseconds
    total = sum(sum(v) for v in by_name.values())
    count = sum(len(v) for v in by_name.values())
    print(
        f"{args.shape} {args.quant or 'bf16'} batch {args.batch}: wall {wall * 1e3:.2f} ms/step "
        f"({args.batch / wall:.1f} tok/s), GPU {total / args.steps / 1e3:.2f} ms/step, "
        f"{count / args.steps:.0f} kernels/step"
    )
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    for name, times in ranked[: args.top]:
        per_step = sum(times) / args.steps
        print(
            f"  {100 * sum(times) / total:5.1f}%  {per_step:8.1f} us/step  {len(times) / args.steps:5.0f}/step  "
            f"{sum(times) / len(times):7.1f} us each  {name[:110]}"
        )


if __name__ == "__main__":
    main()
