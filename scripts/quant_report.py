"""Quality and size of the built-in model per weight format (issue 18, must-show 2; MODEL_CARD.md's table).

    python scripts/quant_report.py --corpus /work/shared/data [--out docs/builtin/quantization.md]

The held-out text is the held-out split of the project's own dataset builder (`mixchat.train.corpus.split`
over the corpus, encoded and packed by `mixchat.train.tokens` with the shipped tokenizer, shuffled with the
builder's seed), so it is the text the card's held-out losses are computed on; the corpus is read in place,
nothing of it is written. For each format the script reports:

- next-token loss per token over every held-out row (nats, all tokens, as the card's table), computed by
  the model's reference forward in float32, so the difference to `none` is the quantization's alone;
- the same loss through what `mixchat` runs on this CPU by default for that format (the CPU executor's
  kernels; bf16 activations for int8/int4);
- weights in memory, and the ten fixed prompts' greedy replies (`scripts/builtin_report.py`'s PROMPTS,
  temperature 0), counted as the same as the full-precision model's reply or not.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from mixchat.engine import TokenGenerated
from mixchat.exec.choose import prepare_modules
from mixchat.loader import build_model, inspect_folder
from mixchat.paths import BUILTIN_DIR
from mixchat.quant.format import QuantSpec, make_spec
from mixchat.quant.modules import weight_bytes
from mixchat.runtime import load_runtime
from mixchat.session import ChatSettings, Conversation
from mixchat.train.corpus import load_corpus, split
from mixchat.train.loop import token_loss
from mixchat.train.spm import load_processor
from mixchat.train.tokens import encode_dialogue_v3, pack_examples

PROMPTS: list[tuple[str, ...]] = [  # scripts/builtin_report.py's, fixed before training
    ("Hi! How are you today?",),
    ("Good morning!",),
    ("What do you like to do on weekends?",),
    ("Do you have any pets?",),
    ("What does happy mean?",),
    ("What does friend mean?",),
    ("What does coffee mean?",),
    ("What does music mean?",),
    ("I just got back from a trip to the mountains.", "What did I just tell you about?"),
]
FORMATS = [QuantSpec(), make_spec("int8"), make_spec("int4", 128), make_spec("int4", 32)]


def heldout_rows(corpus: Path, seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """[R, L + 1] packed held-out rows, as `build_dataset` makes them (the padded last row dropped)."""
    _, heldout = split(load_corpus(corpus))
    order = list(heldout)
    random.Random(f"{seed}:heldout").shuffle(order)
    sp = load_processor(BUILTIN_DIR / "tokenizer.model")
    tokens, _ = pack_examples([encode_dialogue_v3(sp, d) for d in order], seq_len)
    return tokens[:-1].long()


@torch.inference_mode()
def loss(model: torch.nn.Module, rows: torch.Tensor, batch: int = 8) -> float:
    total, n = 0.0, 0
    for s in range(0, rows.shape[0], batch):
        toks = rows[s : s + batch]
        ce, _, _ = token_loss(model, toks, torch.zeros_like(toks, dtype=torch.bool), None)  # type: ignore[arg-type]
        total += ce.double().sum().item()
        n += ce.numel()
    return total / n


def replies(rt) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for group in PROMPTS:
        conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=120))
        for prompt in group:
            out.append("".join(ev.text for ev in conv.send(prompt) if isinstance(ev, TokenGenerated)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("docs/builtin/quantization.md"))
    p.add_argument("--rows", type=int, help="only the first N held-out rows (a quick look)")
    p.add_argument("--run-rows", type=int, default=64, help="rows for the loss as run by the CPU kernels (default 64)")
    a = p.parse_args()
    rows = heldout_rows(a.corpus)
    if a.rows:
        rows = rows[: a.rows]
    ckpt = inspect_folder(BUILTIN_DIR)
    print(f"held-out: {rows.shape[0]} rows, {rows[:, 1:].numel():,} target tokens", flush=True)
    results = []
    base_run = 0.0
    base_replies: list[str] = []
    for spec in FORMATS:
        t0 = time.perf_counter()
        ref = build_model(ckpt, "cpu", torch.float32, spec)
        size = weight_bytes(ref) or 0
        ref_loss = loss(ref, rows)
        run_model = build_model(ckpt, "cpu", torch.bfloat16 if spec.quantized else torch.float32, spec)
        prepare_modules(run_model)
        run_loss = loss(run_model, rows[: a.run_rows])
        base_run = run_loss if not spec.quantized else base_run
        quant = spec if spec.quantized else None
        said = replies(load_runtime(None, device="cpu", dtype="float32", quant=quant))
        if not spec.quantized:
            base_replies = said
        same = sum(x == y for x, y in zip(said, base_replies, strict=True))
        said_bf16 = replies(load_runtime(None, device="cpu", dtype="bfloat16", quant=quant))
        same_bf16 = sum(x == y for x, y in zip(said_bf16, base_replies, strict=True))
        results.append((spec.label, size, ref_loss, run_loss - base_run, same, same_bf16, said))
        print(
            f"{spec.label}: {size:,} bytes, loss {ref_loss:.4f} (as run {run_loss:.4f}), "
            f"same replies {same}/10, at bf16 {same_bf16}/10 ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    base = results[0][2]  # none, float32
    lines = [
        f"Held-out split of the dataset builder: {rows.shape[0]} rows, {rows[:, 1:].numel():,} target tokens. "
        "Written by `python scripts/quant_report.py --corpus DATA`.",
        "",
        "| format | weights in memory | held-out loss (reference, float32) | change | change as run on the CPU "
        f"(kernels, bf16 activations; first {a.run_rows} rows) | same greedy reply as float32 full precision "
        "(10 prompts): float32 activations | bf16 activations |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, size, ref_loss, run_loss, same, same_bf16, _ in results:
        lines.append(
            f"| {label} | {size / 2**20:.1f} MiB | {ref_loss:.4f} | {ref_loss - base:+.4f} | "
            f"{run_loss:+.4f} | {same}/10 | {same_bf16}/10 |"
        )
    lines += ["", "Replies (float32 activations) that differ from full precision's:", ""]
    for label, _, _, _, _, _, said in results[1:]:
        for i, (x, y) in enumerate(zip(said, base_replies, strict=True)):
            if x != y:
                lines.append(f"- {label}, prompt {i + 1}: {x!r} (full precision: {y!r})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
