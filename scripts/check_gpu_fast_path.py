"""Check the fast GPU decode path (CUDA graphs + grouped-GEMM MoE, bf16) against a float32 reference.

Run on a CUDA machine:

    python scripts/check_gpu_fast_path.py [--seed N]

For fresh random weights and prompts (the seed is printed; by default it comes from the clock), three
packed sequences and one single sequence are pre-filled and then decoded for a number of steps by the
engine on the GPU in bf16, where decode steps replay captured CUDA graphs. The same tokens are fed to the
plain `Transformer.forward` in float32 on the CPU. Each step's logits are compared relative to their
scale, and the greedy choices must agree. A near-tie between two experts can flip in bf16, so a handful of
relative errors up to a few per cent is expected in a MoE model; the mean error and the argmax agreement
are the verdict.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mixchat.cache import RollingCache
from mixchat.engine import Engine
from mixchat.loader import random_model
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.moe_grouped import grouped_mm_works


def run_case(name: str, window: int | None, n_seqs: int, seed: int, steps: int = 24) -> bool:
    args = ModelArgs(dim=512, n_layers=4, head_dim=128, hidden_dim=1024, n_heads=8, n_kv_heads=2,
                     vocab_size=1000, sliding_window=window, max_context=4096, moe=MoeArgs(8, 2))
    ref = random_model(args, seed=seed, std=0.03)
    fast = random_model(args, seed=seed, std=0.03).to("cuda", torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 1000, (int(n),), generator=gen).tolist()
               for n in torch.randint(60, 200, (n_seqs,), generator=gen)]
    engine = Engine(fast, None, chunk_size=64, eos_id=-1)
    rows = list(range(n_seqs))
    fcache = engine.new_cache(batch=n_seqs)
    rcache = RollingCache(args, n_seqs, "cpu", torch.float32)
    errs: list[float] = []
    agree = 0
    with torch.inference_mode():
        logits = None
        for item in engine.prefill(fcache, rows, prompts):
            if isinstance(item, torch.Tensor):
                logits = item
        assert logits is not None
        for start in range(0, max(len(p) for p in prompts), 64):
            live = [i for i, p in enumerate(prompts) if start < len(p)]
            layout = rcache.plan([len(prompts[i][start : start + 64]) for i in live], live)
            toks = torch.tensor([t for i in live for t in prompts[i][start : start + 64]])
            out = ref(toks, layout, rcache, last_only=True)
            rcache.advance(layout)
            for j, i in enumerate(live):
                if start + 64 >= len(prompts[i]):  # this sequence's last chunk: its pre-fill logits
                    errs.append(_rel(logits[i].float().cpu(), out[j]))
        nxt = [int(x) for x in logits.argmax(-1).tolist()]
        for _ in range(steps):
            f = engine.forward(fcache, rows, [[t] for t in nxt]).float().cpu()  # the graph path
            layout = rcache.plan([1] * n_seqs, rows)
            r = ref(torch.tensor(nxt), layout, rcache, last_only=True)
            rcache.advance(layout)
            for i in rows:
                errs.append(_rel(f[i], r[i]))
            agree += int((f.argmax(-1) == r.argmax(-1)).sum())
            nxt = [int(x) for x in r.argmax(-1).tolist()]  # both follow the reference's tokens
    decoder = engine.graph_decoder
    graphs = decoder.captured if decoder is not None else 0
    mean_err = sum(errs) / len(errs)
    total = steps * n_seqs
    ok = graphs > 0 and mean_err < 0.02 and agree >= 0.9 * total
    print(f"  {name:<38} graphs captured {graphs}  rel. error mean {mean_err:.2e} max {max(errs):.2e}  "
          f"greedy agreement {agree}/{total}  {'ok' if ok else 'FAIL'}")
    return ok


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    seed = a.seed if a.seed is not None else int(time.time()) % 100_000
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, seed {seed}")
    print(f"  grouped GEMM available in bf16: {grouped_mm_works('cuda', torch.bfloat16)}")
    results = [
        run_case("full attention, 3 packed sequences", None, 3, seed),
        run_case("full attention, 1 sequence", None, 1, seed + 1),
        run_case("sliding window 64, 3 packed sequences", 64, 3, seed + 2),
    ]
    print("ALL OK" if all(results) else "MISMATCH")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
