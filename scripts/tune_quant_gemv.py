"""Time the quantized streaming kernel on Mixtral 8x7B's decode shapes for a few tile settings (GPU only).

    python scripts/tune_quant_gemv.py

First prints what the kernels' probe finds (`quant_mm_problem`) for bf16. Then, for int8 and int4 (groups
of 128), batch 1 (two experts, one row each) and batch 8 (sixteen rows over the experts), and the dense
projections (4096 x 4096 and the 32000 x 4096 head at one row), prints the bandwidth reached per setting,
counting only the codes and scales of the experts that have rows. `stream_config` in quant_triton.py is the
default it is held against.
"""

from __future__ import annotations

import functools

import torch
from tune_expert_gemv import timed  # this folder is on the path when the script runs

from mixchat.exec.quant_triton import quant_grouped_mm, quant_mm_problem, stream_config
from mixchat.quant.format import quantize_int4, quantize_int8

CONFIGS = [
    {"BLOCK_N": 32, "SUB": 2, "num_warps": 4, "num_stages": 4},
    {"BLOCK_N": 32, "SUB": 4, "num_warps": 4, "num_stages": 4},
    {"BLOCK_N": 64, "SUB": 2, "num_warps": 4, "num_stages": 4},
    {"BLOCK_N": 64, "SUB": 4, "num_warps": 4, "num_stages": 4},
    {"BLOCK_N": 64, "SUB": 4, "num_warps": 8, "num_stages": 4},
    {"BLOCK_N": 64, "SUB": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_N": 128, "SUB": 2, "num_warps": 8, "num_stages": 4},
]


def stored(E: int, N: int, K: int, fmt: str) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for _ in range(E):  # one expert at a time: a float32 [E, N, K] would be 1.9 GB
        w = torch.randn(N, K, device="cuda") * 0.02
        got = quantize_int8(w) if fmt == "int8" else quantize_int4(w, 128)
        for name, t in zip(("qweight", "scales", "zeros"), got, strict=False):
            parts.setdefault(name, []).append(t)
    return {k: torch.stack(v) for k, v in parts.items()}


def main() -> None:
    for fmt in ("int8", "int4"):
        print(f"probe {fmt} bf16: {quant_mm_problem('cuda', torch.bfloat16, fmt) or 'ok'}")
    cases = [  # name, E, N, K, experts of the rows
        ("moe w1 b1", 8, 14336, 4096, [2, 5]),
        ("moe w2 b1", 8, 4096, 14336, [2, 5]),
        ("moe w1 b8", 8, 14336, 4096, [0, 0, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 1, 2, 4, 7]),
        ("moe w2 b8", 8, 4096, 14336, [0, 0, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 1, 2, 4, 7]),
        ("dense 4096x4096", 1, 4096, 4096, [0]),
        ("head 32000x4096", 1, 32000, 4096, [0]),
    ]
    for fmt in ("int8", "int4"):
        for name, E, N, K, experts in cases:
            p = stored(E, N, K, fmt)
            counts = torch.bincount(torch.tensor(experts), minlength=E)
            offs = counts.cumsum(0).to(torch.int32).cuda()
            x = torch.randn(len(experts), K, device="cuda", dtype=torch.bfloat16)
            used = [e for e in range(E) if counts[e] > 0]
            nbytes = sum(t[e].numel() * t.element_size() for t in p.values() for e in used)
            default = stream_config(len(experts), N, fmt == "int4")
            line = []
            for cfg in [None, *CONFIGS]:
                run = functools.partial(
                    quant_grouped_mm, x, p["qweight"], p["scales"], p.get("zeros"), offs, config=cfg
                )
                try:
                    s = timed(run, reps=20)
                    label = "default" if cfg is None else "{BLOCK_N}/{SUB}/{num_warps}/{num_stages}".format(**cfg)
                    line.append(f"{label} {nbytes / s / 1e12:.2f}")
                except Exception as exc:  # a setting the compiler refuses (too many registers, say)
                    line.append(f"{cfg} failed: {type(exc).__name__}")
            d = "{BLOCK_N}/{SUB}/{num_warps}/{num_stages}".format(**default)
            print(f"{fmt} {name} ({nbytes / 2**20:.0f} MiB, default {d}): TB/s " + ", ".join(line), flush=True)


if __name__ == "__main__":
    main()
