"""Candidate shapes for the built-in model: parameters, shipped bytes, and CPU decode speed with random weights.

    python scripts/builtin_size.py [--shapes v5,v6,...] [--new-tokens 64] [--repeats 3]

Why random weights are enough: decode speed depends on the shape only (the same matmuls whatever the values;
top-2 routing reads two experts per token either way). Each candidate is written as a real bf16 model folder
(params.json, consolidated.safetensors, the shipped tokenizer), then timed by `mixchat bench --model` in a
child process on float32 (how the app runs it on a CPU), so the figure is the app's own decode path. The
folder's size is the shipped size: the issue's limit is 64 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
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


def measure(name: str, args: ModelArgs, new_tokens: int, repeats: int, prompt_tokens: int) -> dict:
    total, active = args.param_counts()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        save_native(random_model_on(args, torch.device("cpu"), torch.float32), folder, dtype=torch.bfloat16)
        shutil.copy(ROOT / "mixchat" / "builtin" / "tokenizer.model", folder / "tokenizer.model")
        size = folder_bytes(folder)
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
        "decode_tok_s_median": decode["median"],
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
