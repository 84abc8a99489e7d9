"""Time the quantized streaming kernel on Mixtral 8x7B's decode shapes over its tile settings (GPU only).

    python scripts/tune_quant_gemv.py [--json OUT.json]

First prints what the kernels' probe finds (`quant_mm_problem`) for bf16. Then, for int8 and int4 (groups
of 128), batch 1 (one row per chosen expert: the one-row GEMV tile) and batch 8 (sixteen rows over the
experts: the 16-row dot tile), the MoE matrices and the dense projections at one and eight rows, prints the
bandwidth the defaults (`stream_config`) reach and the best setting found, counting only the codes and scales
of the experts that have rows. Each compiled setting is timed at several K splits (a runtime value). Last,
the dequantizing pass of long pre-fills (`dequantize_stacked`), in bytes read and written per second.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable

import torch
from tune_expert_gemv import timed  # this folder is on the path when the script runs

from mixchat.exec.quant_triton import (
    dequantize_stacked,
    quant_grouped_mm,
    quant_mm_problem,
    quant_swiglu,
    stream_config,
)
from mixchat.quant.format import dequantize, quantize_int4, quantize_int8

# BLOCK_N, SUB, num_warps, num_stages; each with every code conversion
GEMV_TILES = [(8, 4, 4, 3), (16, 2, 4, 3), (16, 4, 4, 3), (16, 8, 4, 3), (32, 4, 4, 3)]
DOT_TILES = [(16, 4, 4, 4), (32, 4, 4, 4), (64, 4, 4, 4), (64, 4, 8, 4), (64, 8, 8, 3), (128, 2, 8, 4)]
SPLITS = [1, 2, 4, 8]
B8 = [0, 0, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 1, 2, 4, 7]  # sixteen (token, expert) rows of an 8-token step
CASES = [  # name, E, N, K, expert of each row, most rows per expert (the pass's token count)
    ("moe w1 b1", 8, 14336, 4096, [2, 5], 1),
    ("moe w13 b1", 8, 14336, 4096, [2, 5], 1),  # the fused step's SwiGLU pass (w1 and w3: here one matrix twice)
    ("moe w2 b1", 8, 4096, 14336, [2, 5], 1),
    ("wq/wo b1", 1, 4096, 4096, [0], 1),
    ("wk/wv b1", 1, 1024, 4096, [0], 1),
    ("head b1", 1, 32000, 4096, [0], 1),
    ("moe w1 b8", 8, 14336, 4096, B8, 8),
    ("moe w2 b8", 8, 4096, 14336, B8, 8),
    ("wq/wo b8", 1, 4096, 4096, [0] * 8, 8),
    ("wk/wv b8", 1, 1024, 4096, [0] * 8, 8),
    ("moe w13 b8", 8, 14336, 4096, B8, 8),
]


def graph_timed(fn, calls: int = 20, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Seconds per call of `fn` replayed from a CUDA graph, as in the captured decode step: without the
    Python launch cost, which would hide the small projections' kernel time."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return timed(graph.replay, reps=reps) / calls


def stored(E: int, N: int, K: int, fmt: str) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for _ in range(E):  # one expert at a time: a float32 [E, N, K] would be 1.9 GB
        w = torch.randn(N, K, device="cuda") * 0.02
        got = quantize_int8(w) if fmt == "int8" else quantize_int4(w, 128)
        for name, t in zip(("qweight", "scales", "zeros"), got, strict=False):
            parts.setdefault(name, []).append(t)
    return {k: torch.stack(v) for k, v in parts.items()}


def settings(
    fmt: str, max_rows: int, tiles: list[tuple[int, ...]] | None, cvts: list[int] | None, block_m: int | None = None
) -> list[dict[str, int]]:
    out = []
    grid: list[tuple[int, ...]] = tiles or list(GEMV_TILES if max_rows == 1 else DOT_TILES)
    one_way = max_rows == 1 and fmt == "int4" and not block_m  # int4's GEMV tile unpacks its codes one way
    cvts = cvts or ([1] if one_way else [0, 1])
    for bn, sub, warps, stages in grid:
        for cvt in cvts:
            for split in SPLITS if max_rows > 1 or block_m else SPLITS[:1]:  # one-row GEMVs never gained from one
                tile = {"BLOCK_M": block_m or (1 if max_rows == 1 else 16), "BLOCK_N": bn, "SUB": sub}
                out.append(tile | {"CVT": cvt, "SPLIT": split, "num_warps": warps, "num_stages": stages})
    return out


def label(cfg: dict[str, int]) -> str:
    return "M{BLOCK_M} N{BLOCK_N} S{SUB} c{CVT} k{SPLIT} w{num_warps} s{num_stages}".format(**cfg)


def tune_case(
    fmt: str,
    name: str,
    E: int,
    N: int,
    K: int,
    experts: list[int],
    max_rows: int,
    tiles: list[tuple[int, ...]] | None = None,
    cvts: list[int] | None = None,
    block_m: int | None = None,
) -> dict:
    p = stored(E, N, K, fmt)
    counts = torch.bincount(torch.tensor(experts), minlength=E)
    offs = counts.cumsum(0).to(torch.int32).cuda()
    x = torch.randn(len(experts), K, device="cuda", dtype=torch.bfloat16)
    used = [e for e in range(E) if counts[e] > 0]
    nbytes = sum(t[e].numel() * t.element_size() for t in p.values() for e in used)
    want = torch.cat([x[offs[e] - counts[e] : offs[e]].float() @ _deq(p, e).t() for e in used])

    if "w13" in name:  # rows are tokens here; the reference is silu(w x) * (w x)
        nbytes *= 2
        want = torch.nn.functional.silu(want) * want
        w = (p["qweight"], p["scales"], p.get("zeros"))
        tok = torch.arange(len(experts), dtype=torch.int32, device="cuda")

    def rate(cfg: dict[str, int] | None) -> float | None:
        run: Callable[[], torch.Tensor]
        if "w13" in name:
            run = functools.partial(quant_swiglu, x, w, w, offs, tok, max_rows, cfg)
        else:
            run = functools.partial(quant_grouped_mm, x, p["qweight"], p["scales"], p.get("zeros"), offs, max_rows, cfg)
        try:
            got = run().float()
            if float((got - want).abs().max() / want.abs().max()) > 2e-2:
                return None  # a wrong answer is no speed
            return nbytes / graph_timed(run) / 1e12
        except Exception:  # a setting the compiler refuses (too many registers, say)
            return None

    default = rate(None)
    results = [(rate(cfg), cfg) for cfg in settings(fmt, max_rows, tiles, cvts, block_m)]
    ok = sorted(((r, c) for r, c in results if r is not None), key=lambda rc: -rc[0])
    best = ok[0] if ok else (None, None)
    d = stream_config(max_rows, N, K, fmt == "int4")
    print(
        f"{fmt} {name} ({nbytes / 2**20:.0f} MiB): default {default or 0:.2f} TB/s ({d}); "
        f"best {best[0] or 0:.2f} ({label(best[1]) if best[1] else '-'}); next "
        + ", ".join(f"{r:.2f} {label(c)}" for r, c in ok[1:4]),
        flush=True,
    )
    return {
        "format": fmt,
        "case": name,
        "mib": nbytes / 2**20,
        "default_tbps": default,
        "results": [{"tbps": r, **c} for r, c in results],
    }


def _deq(p: dict[str, torch.Tensor], e: int) -> torch.Tensor:
    return dequantize({k: v[e] for k, v in p.items()})


def dequant_rates() -> list[str]:
    lines = []
    for fmt in ("int8", "int4"):
        p = stored(8, 14336, 4096, fmt)
        moved = sum(t.numel() * t.element_size() for t in p.values()) + 8 * 14336 * 4096 * 2
        run = functools.partial(dequantize_stacked, p["qweight"], p["scales"], p.get("zeros"), torch.bfloat16)
        lines.append(f"dequantize {fmt} 8 x 14336 x 4096 to bf16: {moved / graph_timed(run, calls=3) / 1e12:.2f} TB/s")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write every setting's rate here")
    ap.add_argument("--formats", default="int8,int4")
    ap.add_argument("--cases", default="", help="only the cases whose name contains this (e.g. b1)")
    ap.add_argument("--no-dequant", action="store_true", help="skip timing the pre-fill dequantize pass")
    ap.add_argument("--tiles", default="", help="BLOCK_N:SUB:warps:stages,... instead of the built-in grid")
    ap.add_argument("--cvts", default="", help="code conversions to try, e.g. 1,2")
    ap.add_argument("--block-m", type=int, help="row tile to try (16: the dot tile, at batch 1 too)")
    args = ap.parse_args()
    tiles = [tuple(int(v) for v in t.split(":")) for t in args.tiles.split(",") if t] or None
    cvts = [int(c) for c in args.cvts.split(",") if c] or None
    for fmt in ("int8", "int4"):
        print(f"probe {fmt} bf16: {quant_mm_problem('cuda', torch.bfloat16, fmt) or 'ok'}", flush=True)
    lines = [] if args.no_dequant else dequant_rates()
    cases = [c for c in CASES if args.cases in c[0]]
    out = [tune_case(fmt, *case, tiles, cvts, args.block_m) for fmt in args.formats.split(",") for case in cases]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": out, "dequantize": lines}, f, indent=1)


if __name__ == "__main__":
    main()
