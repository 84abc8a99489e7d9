"""Candidate shapes for the built-in model: parameters, shipped bytes, and CPU decode speed with random weights.

    python scripts/builtin_size.py [--shapes v5,v6,...] [--new-tokens 64] [--repeats 3]

Why random weights are enough: decode speed depends on the shape only (the same matmuls whatever the values;
top-2 routing reads two experts per token either way). Each candidate is written as a real bf16 model folder
(params.json, consolidated*.safetensors, the shipped tokenizer), loaded as the app loads it on a CPU (float32)
and timed two ways: decode tokens per second of CPU time on one thread (`cpu_time_decode`: what a quiet
machine gives) and `mixchat bench --model` in a child process (wall clock, whatever the neighbours do). The
folder's size is the shipped size: the issue's limit is 64 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mixchat.loader import save_native  # noqa: E402
from mixchat.model.args import ModelArgs  # noqa: E402
from mixchat.shapes import random_model_on  # noqa: E402
from mixchat.train.loop import PRESETS  # noqa: E402

LIMIT_BYTES = 64_000_000


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def cpu_time_decode(folder: Path, new_tokens: int, repeats: int, prompt_tokens: int) -> dict:
    """Decode speed per second of CPU time on one thread, the app's decode path (`Engine.forward`).

    Why CPU time: this VM's 2 cores are shared with other jobs (load averages of 9-11 while this was written),
    and wall-clock speed then measures the neighbours. One thread's CPU time per step is what the step costs
    on a core of its own, i.e. the speed on a quiet machine with the TUI's setting (one decode thread, the
    other core left to the UI: `Engine.leave_a_core_for_the_ui`). Best of `repeats` rounds.
    """
    from mixchat.runtime import load_runtime

    rt = load_runtime(folder, device="cpu", dtype="float32")
    engine = rt.engine
    engine.leave_a_core_for_the_ui()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(20, rt.model.args.vocab_size, (prompt_tokens,), generator=gen).tolist()
    best_cpu = best_wall = 0.0
    with torch.inference_mode():  # as `mixchat bench` times it; the model loads outside inference mode
        for _ in range(repeats + 1):  # the first round warms up
            cache = engine.new_cache(batch=1)
            logits = None
            for item in engine.prefill(cache, [0], [prompt]):
                if isinstance(item, torch.Tensor):
                    logits = item
            assert logits is not None
            nxt = logits.argmax(-1).tolist()
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(new_tokens):
                nxt = engine.forward(cache, [0], [[t] for t in nxt]).argmax(-1).tolist()
            c1, w1 = time.process_time(), time.perf_counter()
            best_cpu = max(best_cpu, new_tokens / (c1 - c0))
            best_wall = max(best_wall, new_tokens / (w1 - w0))
    return {"tok_per_cpu_s_1_thread": best_cpu, "tok_per_wall_s_1_thread": best_wall}


def measure(name: str, args: ModelArgs, new_tokens: int, repeats: int, prompt_tokens: int) -> dict:
    total, active = args.param_counts()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        save_native(random_model_on(args, torch.device("cpu"), torch.float32), folder, dtype=torch.bfloat16)
        shutil.copy(ROOT / "mixchat" / "builtin" / "tokenizer.model", folder / "tokenizer.model")
        size = folder_bytes(folder)
        cpu = cpu_time_decode(folder, new_tokens, repeats, prompt_tokens)
        cmd = [
            sys.executable,
            "-m",
            "mixchat",
            "bench",
            "--model",
            str(folder),
            "--json",
            "--dtype",
            "float32",
            "--prompt-tokens",
            str(prompt_tokens),
            "--new-tokens",
            str(new_tokens),
            "--repeats",
            str(repeats),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "bench failed")
        bench = json.loads(res.stdout)
    decode = bench["decode_tokens_per_s"]
    return {
        "shape": name,
        "params": args.to_params_json(),
        "total_params": total,
        "active_params": active,
        "folder_bytes": size,
        "fits_64MB": size <= LIMIT_BYTES,
        **{k: round(v, 1) for k, v in cpu.items()},
        "bench_decode_tok_s_median": round(decode["median"], 1),
        "decode_tok_s": decode,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(k for k in PRESETS if k != "smoke"))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rows = []
    for name in a.shapes.split(","):
        row = measure(name, PRESETS[name](8192, False), a.new_tokens, a.repeats, a.prompt_tokens)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("params", "decode_tok_s")}), flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
