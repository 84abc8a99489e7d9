"""Peak memory of loading a ~1 GB bfloat16 checkpoint with the default settings.

Writes a Mistral-native checkpoint (params.json + consolidated.safetensors in bfloat16, the v3 SentencePiece
tokenizer from mistral-common's data folder) of about 1 GB to a temporary folder, then runs a fresh
`python -m mixchat generate --model DIR --device cpu --max-tokens 1 ...` (which loads every weight and runs one
pass) and reports that child's peak resident set size (`ru_maxrss` from `os.wait4` on it alone). With
`--dtype auto` (the default) a CPU with avx512_bf16/AMX keeps the checkpoint in bfloat16, so the peak should
stay near the model's size (issue 14: under 1.4 GB); pass `--dtype float32` to see the old default (~2x).

    python scripts/load_memory.py [--dtype auto|float32|bfloat16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# Dense Mistral shape of ~504M parameters: 1.01 GB in bfloat16.
PARAMS = dict(dim=1024, n_layers=26, head_dim=128, hidden_dim=4096, n_heads=8, n_kv_heads=8, norm_eps=1e-5,
              vocab_size=32768, rope_theta=1e6, sliding_window=None)  # fmt: skip


def write_checkpoint(folder: Path) -> int:
    """The checkpoint, tensor by tensor from a seeded generator; returns the weight file's size in bytes."""
    import mistral_common

    p = PARAMS
    dim, hd, hidden = p["dim"], p["head_dim"], p["hidden_dim"]
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (p["vocab_size"], dim),
        "norm.weight": (dim,),
        "output.weight": (p["vocab_size"], dim),
    }
    for i in range(p["n_layers"]):
        pre = f"layers.{i}."
        shapes |= {
            pre + "attention.wq.weight": (p["n_heads"] * hd, dim),
            pre + "attention.wk.weight": (p["n_kv_heads"] * hd, dim),
            pre + "attention.wv.weight": (p["n_kv_heads"] * hd, dim),
            pre + "attention.wo.weight": (dim, p["n_heads"] * hd),
            pre + "feed_forward.w1.weight": (hidden, dim),
            pre + "feed_forward.w2.weight": (dim, hidden),
            pre + "feed_forward.w3.weight": (hidden, dim),
            pre + "attention_norm.weight": (dim,),
            pre + "ffn_norm.weight": (dim,),
        }
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            state[name] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "consolidated.safetensors"))
    (folder / "params.json").write_text(json.dumps(PARAMS, indent=2) + "\n")
    data = Path(mistral_common.__file__).parent / "data"
    shutil.copy(data / "mistral_instruct_tokenizer_240323.model.v3", folder / "tokenizer.model.v3")
    return (folder / "consolidated.safetensors").stat().st_size


def peak_rss_of(cmd: list[str], cwd: Path) -> tuple[int, int, str, float]:
    """(return code, peak RSS in bytes, stderr, seconds) of `cmd`, from wait4 on that one child.

    RUSAGE_CHILDREN would report the largest of all children so far (the checkpoint writer's included), and a
    child forked from a big parent starts with the parent's pages: so the checkpoint is written by a child of
    its own, and this child's figure is read for it alone.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, err, time.perf_counter() - start  # ru_maxrss: kB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--keep", metavar="DIR", help="write the checkpoint here and keep it (default: a temp dir)")
    ap.add_argument("--write-only", metavar="DIR", help=argparse.SUPPRESS)  # the writer child
    args = ap.parse_args()
    if args.write_only:
        write_checkpoint(Path(args.write_only))
        return 0
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="mixchat-load-memory-")
    folder = Path(args.keep) if args.keep else Path(tmp.name) / "model"  # type: ignore[union-attr]
    repo = Path(__file__).resolve().parents[1]
    try:
        reused = (folder / "params.json").is_file()
        if not reused:
            subprocess.run([sys.executable, __file__, "--write-only", str(folder)], check=True, cwd=repo)
        weights = (folder / "consolidated.safetensors").stat().st_size
        cmd = [sys.executable, "-m", "mixchat", "generate", "--model", str(folder), "--device", "cpu",
               "--dtype", args.dtype, "--max-tokens", "1", "--temperature", "0", "--prompt", "Hello"]  # fmt: skip
        rc, peak, err, seconds = peak_rss_of(cmd, repo)
        if rc != 0:
            print(err.strip(), file=sys.stderr)
            return rc
        print(f"weights {weights / 1e9:.3f} GB (bfloat16){' (reused)' if reused else ''}; --dtype {args.dtype}: "
              f"peak RSS {peak / 1e9:.3f} GB = {peak / 2**30:.3f} GiB ({peak / weights:.2f}x the weights), "
              f"{seconds:.1f} s")  # fmt: skip
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
