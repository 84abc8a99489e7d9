"""Figures for the built-in model's card: fixed sample replies, expert usage and specialisation, loss plot.

    python scripts/builtin_report.py --dataset .data/v6 --corpus ../shared/data --out docs/builtin

Reads the shipped model (mixchat/builtin, or --model), the held-out token set and taught-word list made by
`mixchat train` (the dataset folder) and the training logs copied to OUT (train_log_moe.csv,
train_log_dense.csv). Writes OUT/samples.md, OUT/expert_usage.md and OUT/heldout_loss.svg, and with
--corpus OUT/definitions.md (recall of the 500 commonest taught words). The held-out checks of issue 15
are in scripts/builtin_eval.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import string
from collections import Counter
from pathlib import Path

import torch

from mixchat.chat_template import Message, encode_chat
from mixchat.engine import SequenceFinished, TokenGenerated
from mixchat.model.layers import Routing
from mixchat.model.layout import fresh_layout
from mixchat.runtime import load_runtime
from mixchat.sampling import SamplingSettings
from mixchat.session import ChatSettings, Conversation
from mixchat.train.corpus import read_xz
from mixchat.train.heldout import HELDOUT_WORDS
from mixchat.train.tokens import load_packed
from mixchat.train.wordnet import excluded_synsets, load_lexicon, taught_senses

# Fixed before looking at any reply: greetings, small talk, common words, and a follow-up that needs the
# previous turn (the second item of a pair is sent in the same conversation).
PROMPTS: list[tuple[str, ...]] = [
    ("Hi! How are you today?",),
    ("Good morning!",),
    ("What do you like to do on weekends?",),
    ("Do you have any pets?",),
    ("What does happy mean?",),
    ("What does friend mean?",),
    ("What does coffee mean?",),
    ("What does music mean?",),
    ("I just got back from a trip to the mountains.", "What did I just tell you about?"),
    # added for v6, before its training: identity, memory two turns back, a capital, a held-out word
    ("Who are you?",),
    ("My sister lives in Oslo.", "What is your favourite season?", "Where does my sister live?"),
    ("What is the capital of Japan?",),
    ("What does river mean?", "What does music mean?"),
]


def samples(rt) -> str:  # type: ignore[no-untyped-def]
    lines = ["| # | prompt | reply (temperature 0) |", "|---|---|---|"]
    n = 0
    for group in PROMPTS:
        conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=120))
        for prompt in group:
            text, reason = [], ""
            for ev in conv.send(prompt):
                if isinstance(ev, TokenGenerated):
                    text.append(ev.text)
                elif isinstance(ev, SequenceFinished):
                    reason = ev.reason
            n += 1
            reply = "".join(text).strip().replace("|", "\\|").replace("\n", " ")
            mark = "" if reason == "eos" else f" *(stopped: {reason})*"
            follow = " *(follow-up, same conversation)*" if prompt is not group[0] else ""
            lines.append(f"| {n} | {prompt}{follow} | {reply}{mark} |")
    return "\n".join(lines) + "\n"


UNSEEN_PHRASING = "Tell me what {w} means."
"""A way to ask that no training turn uses: recall under it shows the word -> gloss link, not a memorised string."""


def definition_recall(rt, corpus: Path, dataset: Path, index: Path | None, batch: int = 48, n: int = 500) -> str:  # type: ignore[no-untyped-def]
    """Recall under the card's phrasing ("What does W mean?") and under one that training never uses."""
    lex = load_lexicon(read_xz(corpus / "wordnet_glosses.txt.xz"), index)
    banned = excluded_synsets(lex, HELDOUT_WORDS)
    taught: dict[str, str] = {}
    glosses: dict[str, list[str]] = {}
    for w in json.loads((dataset / "taught_words.json").read_text())[:n]:
        senses = taught_senses([s for s in lex.senses[w] if s.synset not in banned])
        taught[w] = senses[0].gloss.lower()
        glosses[w] = [s.gloss.lower() for s in lex.senses[w]]
    return "\n".join(_recall_table(rt, taught, glosses, q, batch) for q in ("What does {w} mean?", UNSEEN_PHRASING))


def _recall_table(rt, taught: dict[str, str], glosses: dict[str, list[str]], phrasing: str, batch: int) -> str:  # type: ignore[no-untyped-def]
    """Ask `phrasing` for the commonest words the training data defines, at temperature 0.

    A reply counts as right when it contains the gloss that the training data gives as the word's first
    answer, and as "another sense" when it contains another of the word's WordNet glosses instead.
    Everything else (a gloss of a different word, an invented one) is wrong.
    """
    words = list(taught)
    settings = SamplingSettings(temperature=0.0, max_tokens=80)
    right, other, wrong = [], [], []
    for i in range(0, len(words), batch):
        group = words[i : i + batch]
        prompts = [encode_chat(rt.tokenizer, [Message("user", phrasing.format(w=w))]) for w in group]
        texts = [""] * len(group)
        for ev in rt.engine.generate(prompts, settings, trace=False):
            if isinstance(ev, TokenGenerated):
                texts[ev.seq] += ev.text
        for w, text in zip(group, texts, strict=True):
            reply = text.lower()
            if taught[w] in reply:
                right.append(w)
            elif any(g in reply for g in glosses[w]):
                other.append(w)
            else:
                wrong.append(w)
    n = len(words)
    lines = [
        f'Definition recall over the {n} commonest words the training data defines ("{phrasing.format(w="W")}", '
        "temperature 0):",
        "",
        "| reply holds | words | share |",
        "|---|---|---|",
        f"| the taught gloss | {len(right)} | {len(right) / n:.0%} |",
        f"| another WordNet sense of the word | {len(other)} | {len(other) / n:.0%} |",
        f"| neither (another word's gloss, or invented) | {len(wrong)} | {len(wrong) / n:.0%} |",
        "",
        f"Examples right: {', '.join(right[:: max(1, len(right) // 25)][:25])}.",
        "",
        f"Examples wrong: {', '.join(wrong[:: max(1, len(wrong) // 25)][:25])}.",
    ]
    return "\n".join(lines) + "\n"


def token_class(piece: str) -> str:
    if piece.startswith("<") and piece.endswith(">"):
        return "control/byte"
    core = piece.lstrip("\u2581")
    if not core:
        return "space"
    if all(ch in string.punctuation for ch in core):
        return "punctuation"
    if core.isdigit():
        return "digit"
    if piece.startswith("\u2581"):
        return "word start"
    return "word piece"


@torch.inference_mode()
def usage(rt, dataset: Path, rows: int = 200) -> str:  # type: ignore[no-untyped-def]
    tokens, _ = load_packed(dataset / "heldout.safetensors")
    tokens = tokens[: min(rows, tokens.shape[0] - 1)]
    args = rt.model.args
    L, E = args.n_layers, args.moe.num_experts
    counts = torch.zeros(L, E)
    first_by_class: list[list[Counter[str]]] = [[Counter() for _ in range(E)] for _ in range(L)]
    classes = [token_class(rt.tokenizer.id_to_piece(i)) for i in range(rt.tokenizer.vocab_size)]
    base = Counter[str]()
    for row in tokens:
        routing: list[Routing] = []
        rt.model(row, fresh_layout([row.shape[0]], args.sliding_window, "cpu"), router_out=routing)
        ids = row.tolist()
        base.update(classes[t] for t in ids)
        for li, r in enumerate(routing):
            counts[li] += torch.bincount(r.experts.reshape(-1), minlength=E).float()
            for t, e in zip(ids, r.experts[:, 0].tolist(), strict=True):
                first_by_class[li][e][classes[t]] += 1
    share = counts / counts.sum(1, keepdim=True) * 100
    n_tok = sum(base.values())
    out = [
        f"Share of top-2 assignments per expert, {n_tok:,} held-out tokens ({tokens.shape[0]} rows):",
        "",
        "| layer | " + " | ".join(f"e{e}" for e in range(E)) + " | min |",
        "|---" * (E + 2) + "|",
    ]
    for li in range(L):
        out.append(
            f"| {li} | " + " | ".join(f"{x:.1f}%" for x in share[li].tolist()) + f" | {share[li].min().item():.1f}% |"
        )
    out += [
        "",
        "Specialisation: for each layer, the expert whose first choice is most skewed towards one token "
        "class of text tokens, compared with that class's share of all tokens:",
        "",
        "| layer | expert | class | share of the expert's first choices | share of all tokens | lift |",
        "|---|---|---|---|---|---|",
    ]
    for li in range(L):
        best = None
        for e in range(E):
            tot = sum(first_by_class[li][e].values())
            if tot < 200:
                continue
            for cls, c in first_by_class[li][e].items():
                lift = (c / tot) / (base[cls] / n_tok)
                if cls == "control/byte" or base[cls] / n_tok <= 0.02:
                    continue  # [INST]/[/INST]/</s> are trivially separable; look at text tokens
                if best is None or lift > best[0]:
                    best = (lift, e, cls, c / tot, base[cls] / n_tok)
        if best:
            lift, e, cls, s, b = best
            out.append(f"| {li} | e{e} | {cls} | {s * 100:.0f}% | {b * 100:.0f}% | {lift:.1f}x |")
    return "\n".join(out) + "\n"


def svg_plot(moe_csv: Path, dense_csv: Path, out: Path) -> None:
    """A small hand-made SVG line chart (no plotting library needed)."""

    def read(p: Path) -> list[tuple[float, float]]:
        with open(p) as f:
            return [(int(r["tokens"]) / 1e6, float(r["heldout_loss"])) for r in csv.DictReader(f)]

    series = {"MoE 8x top-2": (read(moe_csv), "#d9480f"), "dense, same active params": (read(dense_csv), "#1c7ed6")}
    pts = [p for s, _ in series.values() for p in s]
    x0, x1 = 0.0, max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts) - 0.02, max(p[1] for p in pts) + 0.02
    W, H, m = 640, 360, 50

    def X(x: float) -> float:
        return m + (x - x0) / (x1 - x0) * (W - 2 * m)

    def Y(y: float) -> float:
        return H - m - (y - y0) / (y1 - y0) * (H - 2 * m)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
        f'<line x1="{m}" y1="{H - m}" x2="{W - m}" y2="{H - m}" stroke="black"/>',
        f'<line x1="{m}" y1="{m}" x2="{m}" y2="{H - m}" stroke="black"/>',
        f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">training tokens (millions)</text>',
        f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">'
        "held-out loss per token (nats)</text>",
    ]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{m - 6}" y="{Y(yv) + 4:.1f}" text-anchor="end">{yv:.2f}</text>')
        xv = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{X(xv):.1f}" y="{H - m + 16}" text-anchor="middle">{xv:.0f}</text>')
    for k, (name, (s, colour)) in enumerate(series.items()):
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(f'<text x="{W - m - 180}" y="{m + 16 * k}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("docs/builtin"))
    p.add_argument("--corpus", type=Path, help="corpus folder: also measure definition recall")
    p.add_argument("--model", type=Path, help="model folder (default: the shipped built-in model)")
    p.add_argument("--wordnet-index", type=Path, default=Path(".data/wordnet"), help="WordNet's index files")
    a = p.parse_args()
    torch.set_num_threads(1)
    rt = load_runtime(a.model, device="cpu", dtype="float32")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "samples.md").write_text(samples(rt))
    (a.out / "expert_usage.md").write_text(usage(rt, a.dataset))
    svg_plot(a.out / "train_log_moe.csv", a.out / "train_log_dense.csv", a.out / "heldout_loss.svg")
    print((a.out / "samples.md").read_text())
    print((a.out / "expert_usage.md").read_text())
    if a.corpus:
        (a.out / "definitions.md").write_text(definition_recall(rt, a.corpus, a.dataset, a.wordnet_index))
        print((a.out / "definitions.md").read_text())


if __name__ == "__main__":
    main()
