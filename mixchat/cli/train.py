"""`mixchat train`: rebuild the built-in model (tokenizer, data, weights) from the corpus."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mixchat.cli.common import positive_int
from mixchat.runtime import UserError

DESCRIPTION = """\
Train the built-in model from the corpus folder (the *.txt.xz files described in its SOURCES.md).
Stage 1 builds the tokenizer and the packed token sets into OUT/dataset (skipped when --dataset is given);
stage 2 trains and writes a Mistral-native model folder to OUT/model, with train_log.csv and summary.json."""

EPILOG = """\
examples:
  mixchat train --corpus ../shared/data --out runs/moe                      # the shipped model (GPU)
  mixchat train --dataset runs/moe/dataset --out runs/dense --dense          # its dense twin, same data
  mixchat train --corpus ../shared/data --out /tmp/smoke --preset smoke --steps 5   # seconds, on a CPU"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the built-in model from the corpus",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", metavar="DIR", help="folder holding the corpus *.txt.xz files")
    src.add_argument("--dataset", metavar="DIR", help="an already built dataset folder (train.safetensors, ...)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument(
        "--preset",
        default="builtin",
        help="model shape: builtin (the shipped one), v5 (the previous one), smoke (tiny, for a CPU "
        "smoke test), or another name of mixchat.train.loop.PRESETS",
    )
    p.add_argument("--dense", action="store_true", help="train the dense twin (same active parameters)")
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="cut the run to the steps that fit in SECONDS, timed on steps 10-30 (then OUT/steps.json "
        "says how many, so a twin can train the same number)",
    )
    p.add_argument("--eval-every", type=positive_int, default=250)
    p.add_argument("--eval-batches", type=positive_int, default=20)
    p.add_argument("--vocab-size", type=positive_int, default=8192)
    p.add_argument("--seq-len", type=positive_int, default=512)
    p.add_argument(
        "--wordnet-index",
        metavar="DIR",
        help="WordNet's index files for sense order (default: CORPUS/wordnet, then .data/wordnet; "
        "scripts/fetch_wordnet_index.sh gets them)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the data's repeat counts (below 1 for quick CPU checks; default 1)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixchat.train.loop import PRESETS, TrainConfig, Trainer

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}: use {', '.join(PRESETS)}")
    out = Path(args.out)
    if args.dataset:
        dataset = Path(args.dataset)
        if not (dataset / "stats.json").is_file():
            raise UserError(f"{dataset} is not a dataset folder (no stats.json); build one with --corpus")
    else:
        corpus = Path(args.corpus)
        if not corpus.is_dir() or not list(corpus.glob("*.txt.xz")):
            raise UserError(f"no corpus found in {corpus} (expected *.txt.xz files)")
        from mixchat.train.tokens import build_dataset

        dataset = out / "dataset"
        print(f"building tokenizer and token sets from {corpus} into {dataset} ...", flush=True)
        stats = build_dataset(
            corpus,
            dataset,
            vocab_size=args.vocab_size,
            seq_len=args.seq_len,
            seed=args.seed,
            wordnet_index=Path(args.wordnet_index) if args.wordnet_index else None,
            scale=args.scale,
        )
        order = stats["mix"].get("wordnet", {}).get("sense_order")
        if order not in (None, "wordnet-index"):
            print(f"  warning: WordNet senses in {order} order (no index files found: run "
                  "scripts/fetch_wordnet_index.sh or pass --wordnet-index)", flush=True)  # fmt: skip
        print(
            f"  train {stats['splits']['train']['tokens']:,} tokens, "
            f"held-out {stats['splits']['heldout']['tokens']:,} tokens",
            flush=True,
        )
    cfg = TrainConfig(
        dataset=dataset,
        out=out,
        preset=args.preset,
        dense=args.dense,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=min(args.eval_every, args.steps),
        eval_batches=args.eval_batches,
        seed=args.seed,
        device=args.device,
        warmup=min(150, max(1, args.steps // 10)),
        time_budget=args.time_budget,
    )
    trainer = Trainer(cfg)
    total, active = trainer.args.param_counts()
    print(
        f"training {'dense' if args.dense else 'MoE'} model: {total / 1e6:.1f}M parameters "
        f"({active / 1e6:.1f}M active) on {trainer.device}, {args.steps} steps x {args.batch_size} rows",
        flush=True,
    )
    summary = trainer.run()
    print(json.dumps({k: summary[k] for k in ("steps", "tokens", "seconds", "final")}, indent=2))
    print(f"model written to {out / 'model'}")
    return 0
