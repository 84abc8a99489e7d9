"""Profile the built-in model's decode step and a 1,000-token pre-fill on the CPU (torch profiler tables).

A helper for performance work: `python scripts/profile_cpu_step.py [--decode-steps N] [--rows 25]`.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mixchat.engine import Engine
from mixchat.loader import build_model, inspect_folder
from mixchat.runtime import resolve_model_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=1000)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--no-profile", action="store_true", help="only print timings")
    args = p.parse_args()
    model = build_model(inspect_folder(resolve_model_path(None)), "cpu", torch.float32)
    engine = Engine(model, None, eos_id=-1)
    prompt = torch.randint(3, model.args.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0))

    def prefill(cache):  # type: ignore[no-untyped-def]
        out = None
        for item in engine.prefill(cache, [0], [prompt.tolist()]):
            if isinstance(item, torch.Tensor):
                out = item
        return out

    def decode(cache, logits, n):  # type: ignore[no-untyped-def]
        nxt = logits.argmax(-1).tolist()
        for _ in range(n):
            logits = engine.forward(cache, [0], [[t] for t in nxt])
            nxt = logits.argmax(-1).tolist()

    with torch.inference_mode():
        for _ in range(2):
            cache = engine.new_cache()
            decode(cache, prefill(cache), 8)
        ts, ds = [], []
        for _ in range(5):
            cache = engine.new_cache()
            t0 = time.perf_counter()
            logits = prefill(cache)
            t1 = time.perf_counter()
            decode(cache, logits, args.decode_steps)
            t2 = time.perf_counter()
            ts.append(t1 - t0)
            ds.append((t2 - t1) / args.decode_steps)
        ts.sort()
        ds.sort()
        print(f"pre-fill {ts[2] * 1e3:.1f} ms, decode step {ds[2] * 1e3:.2f} ms ({1 / ds[2]:.0f} tokens/s)")
        if args.no_profile:
            return
        cache = engine.new_cache()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            logits = prefill(cache)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode(cache, logits, args.decode_steps)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
