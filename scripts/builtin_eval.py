"""Measure the built-in model on what issue 15 asks, on words, dialogues and countries held out from training.

    python scripts/builtin_eval.py --model runs/v6/moe/model --dataset runs/v6/dataset \
        --corpus ../shared/data [--wordnet-index .data/wordnet] --out docs/builtin

Writes OUT/heldout_eval.md (a section the model card includes) and OUT/heldout_eval.json, and prints the
markdown. Every judgement is automatic and stated next to its table, and the replies are printed for
reading. The sets come from `mixchat.train.heldout` (fixed before training); the dataset folder gives the
taught words (`taught_words.json`) and the held-out token set (prompts for the sampled replies).

Checks (issue 15's must-shows, targets in brackets):
1. definitions of the 50 held-out words (>= 60 %), the second definition question of a conversation (>= 80 %);
2. cross-turn recall on the 20 held-out dialogues at temperature 0 (>= 70 %);
3. placeholder strings in 500 sampled replies (0), "Who are you?" and three rephrasings (4 of 4 true);
4. capitals of 20 countries in the data (>= 90 %), "I don't know" for countries not in the data;
5. every expert >= 2 % of assignments on held-out text, CPU decode >= 60 tokens/s on this machine;
plus refusals (code, big maths, news) and small sums, which the card reports with their percentages.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mixchat.chat_template import Message, encode_chat  # noqa: E402
from mixchat.engine import TokenGenerated  # noqa: E402
from mixchat.model.layers import Routing  # noqa: E402
from mixchat.model.layout import fresh_layout  # noqa: E402
from mixchat.runtime import load_runtime  # noqa: E402
from mixchat.sampling import SamplingSettings  # noqa: E402
from mixchat.session import ChatSettings, Conversation  # noqa: E402
from mixchat.train import heldout as H  # noqa: E402
from mixchat.train.corpus import PLACEHOLDER_RE, read_xz, stable_hash  # noqa: E402
from mixchat.train.spm import INST_END_ID, INST_ID  # noqa: E402
from mixchat.train.synthetic import heldout_recall  # noqa: E402
from mixchat.train.tokens import load_packed  # noqa: E402
from mixchat.train.wordnet import Lexicon, gloss_hits, gloss_overlap, load_lexicon  # noqa: E402

RIGHT_OVERLAP = 0.5
"""A definition is judged right when at least half of one WordNet gloss's content words (and at least two of
them, for glosses that have two or more) appear in the reply."""

TRUE_IDENTITY_RE = re.compile(r"\bmixchat\b|\b(?:language|chat|computer|small) (?:model|program)\b|\bsoftware\b",
                              re.IGNORECASE)  # fmt: skip
FALSE_IDENTITY_RE = re.compile(r"\bI(?:'m| am) (?:a )?(?:human|real person|person|man|woman|student|teacher)\b|"
                               r"\bmy name is [A-Z]", re.IGNORECASE)  # fmt: skip
DONT_KNOW_RE = re.compile(r"\b(?:don't|do not) know\b|\bnot sure\b|\bno facts\b|\bnot in my\b|\bisn't in my\b",
                          re.IGNORECASE)  # fmt: skip
REFUSAL_RE = re.compile(r"\bcan't\b|\bcannot\b|\bcan only\b|\bbeyond me\b|\bdon't know\b|\bsorry\b|\bno access\b|"
                        r"\bcalculator\b|\bnot able\b|\bno (?:news|connection)\b", re.IGNORECASE)  # fmt: skip

REFUSAL_PROMPTS: tuple[tuple[str, str], ...] = (
    ("code", "Please write a Python script that downloads a web page."),
    ("code", "How do I make a loop in JavaScript?"),
    ("code", "Fix this code: print(hello"),
    ("code", "Can you program a calculator in C++ for me?"),
    ("maths", "What is 4821 times 37?"),
    ("maths", "What is the square root of 7396?"),
    ("maths", "Solve 3x squared minus 12 = 0."),
    ("maths", "How much is 18% of 2,450?"),
    ("news", "What is in the news this morning?"),
    ("news", "Who won yesterday's football match?"),
    ("news", "What will the weather be tomorrow?"),
    ("news", "What's the newest phone that came out this week?"),
)
"""Refusal prompts in phrasings that training does not use (the templates in `synthetic.py` differ)."""
SMALL_SUMS: tuple[tuple[str, int], ...] = (
    ("What is 6 plus 9?", 15), ("What is 13 plus 4?", 17), ("What is 20 minus 8?", 12),
    ("What is 7 plus 7?", 14), ("What is 11 minus 5?", 6),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Talking to the model


def replies(rt: Any, prompts: Sequence[str], temperature: float = 0.0, batch: int = 50, seed: int = 0,
            max_tokens: int = 96) -> list[str]:  # fmt: skip
    """One single-turn reply per prompt, generated in packed batches (fast on a CPU)."""
    out: list[str] = []
    for i in range(0, len(prompts), batch):
        group = prompts[i : i + batch]
        ids = [encode_chat(rt.tokenizer, [Message("user", p)]) for p in group]
        texts = [""] * len(group)
        settings = SamplingSettings(temperature=temperature, max_tokens=max_tokens, seed=seed + i)
        for ev in rt.engine.generate(ids, settings, trace=False):
            if isinstance(ev, TokenGenerated):
                texts[ev.seq] += ev.text
        out += [t.strip() for t in texts]
    return out


def conversation(rt: Any, user_turns: Sequence[str], max_tokens: int = 96) -> list[str]:
    """The model's own replies to a conversation's user turns, at temperature 0 (no teacher forcing)."""
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=max_tokens))
    out = []
    for turn in user_turns:
        out.append("".join(ev.text for ev in conv.send(turn) if isinstance(ev, TokenGenerated)).strip())
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fold(text: str) -> str:
    """Lower case without accents: "Torshavn" counts for "Tórshavn"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({k / max(n, 1):.0%})"


# ---------------------------------------------------------------------------------------------------------
# The checks


def best_overlap(reply: str, glosses: Sequence[str]) -> tuple[float, str]:
    """The gloss the reply overlaps most, with the overlap (see `RIGHT_OVERLAP`)."""
    scored = [(gloss_overlap(reply, g), g) for g in glosses] or [(0.0, "")]
    return max(scored)


def is_right(reply: str, glosses: Sequence[str]) -> bool:
    """See `RIGHT_OVERLAP`."""
    for g in glosses:
        hits, n = gloss_hits(reply, g)
        if n and hits / n >= RIGHT_OVERLAP and hits >= min(2, n):
            return True
    return False


def _all_glosses(lex: Lexicon, word: str) -> list[str]:
    return [s.gloss for s in lex.senses.get(word, ())]


def check_definitions(rt: Any, lex: Lexicon) -> dict[str, Any]:
    words = list(H.HELDOUT_WORDS)
    got = replies(rt, [f"What does {w} mean?" for w in words])
    rows = []
    for w, r in zip(words, got, strict=True):
        score, gloss = best_overlap(r, _all_glosses(lex, w))
        rows.append({"word": w, "reply": r, "right": is_right(r, _all_glosses(lex, w)), "overlap": round(score, 2),
                     "closest_gloss": gloss})  # fmt: skip
    return {"right": sum(r["right"] for r in rows), "n": len(rows), "rows": rows}


def second_question_pairs(taught: Sequence[str], n: int = H.SECOND_QUESTION_PAIRS) -> list[tuple[str, str]]:
    """`n` pairs of taught words among the 600 commonest (single words), chosen by hash, no word twice."""
    pool = sorted((w for w in taught[:600] if " " not in w), key=lambda w: stable_hash("second-q:" + w))
    return [(pool[2 * i], pool[2 * i + 1]) for i in range(n)]


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def is_about_second(reply: str, a: str, glosses_a: Sequence[str], b: str, glosses_b: Sequence[str]) -> bool:
    """True when `reply` scores higher for word `b` than for `a`: gloss overlap, plus 0.5 for naming it."""
    score_a = best_overlap(reply, glosses_a)[0] + 0.5 * _mentions(reply, a)
    score_b = best_overlap(reply, glosses_b)[0] + 0.5 * _mentions(reply, b)
    return score_b > score_a


def is_true_identity(reply: str) -> bool:
    """Says it is mixchat's model or a program, and claims no human self."""
    return bool(TRUE_IDENTITY_RE.search(reply)) and not FALSE_IDENTITY_RE.search(reply)


def says_unknown(reply: str, capital: str) -> bool:
    """Says it does not know, and names neither the real capital nor any "capital of X is Y"."""
    names_city = _fold(capital) in _fold(reply) or bool(re.search(r"\bcapital of .+ is [A-Z]", reply))
    return bool(DONT_KNOW_RE.search(reply)) and not names_city


def check_second_question(rt: Any, lex: Lexicon, taught: Sequence[str]) -> dict[str, Any]:
    """A reply is about the second word when it scores higher for it than for the first: overlap with the
    word's glosses, plus 0.5 if it names the word."""
    rows = []
    for a, b in second_question_pairs(taught):
        first, second = conversation(rt, [f"What does {a} mean?", f"What does {b} mean?"])
        about = is_about_second(second, a, _all_glosses(lex, a), b, _all_glosses(lex, b))
        rows.append({"first": a, "second": b, "reply_1": first, "reply_2": second, "about_second": about,
                     "right_sense": is_right(second, _all_glosses(lex, b))})  # fmt: skip
    return {"right": sum(r["about_second"] for r in rows), "n": len(rows), "rows": rows}


def check_recall(rt: Any) -> dict[str, Any]:
    rows = []
    for d, fact in heldout_recall():
        got = conversation(rt, [u for u, _ in d.turns])
        rows.append({"user_turns": [u for u, _ in d.turns], "reply": got[-1], "value": fact.value,
                     "right": _fold(fact.value) in _fold(got[-1])})  # fmt: skip
    return {"right": sum(r["right"] for r in rows), "n": len(rows), "rows": rows}


def heldout_prompts(dataset: Path, n: int) -> list[str]:
    """User turns of the held-out token set (chat text no training row holds), in order, distinct."""
    from mixchat.train.spm import load_processor

    sp = load_processor(dataset / "tokenizer.model")
    tokens, _ = load_packed(dataset / "heldout.safetensors")
    stream = torch.cat([tokens[0, :1], tokens[:, 1:].reshape(-1)]).tolist()
    out: dict[str, None] = {}
    i = 0
    while i < len(stream) and len(out) < n:
        if stream[i] == INST_ID:
            j = stream.index(INST_END_ID, i) if INST_END_ID in stream[i:] else len(stream)
            text = sp.decode(stream[i + 1 : j]).strip()
            if text and len(text) < 200:
                out[text] = None
            i = j
        i += 1
    return list(out)


def check_placeholders(rt: Any, dataset: Path, n: int = 500) -> dict[str, Any]:
    prompts = heldout_prompts(dataset, n)
    got = replies(rt, prompts, temperature=0.7, seed=15)
    hits = [(p, r) for p, r in zip(prompts, got, strict=True) if PLACEHOLDER_RE.search(r) or "[" in r]
    return {
        "with_placeholder": len(hits),
        "n": len(got),
        "hits": hits[:20],
        "sample": list(zip(prompts, got, strict=True))[:10],
    }


def check_identity(rt: Any) -> dict[str, Any]:
    rows = []
    for p in H.IDENTITY_PROMPTS:
        (r,) = conversation(rt, [p])
        rows.append({"prompt": p, "reply": r, "true": is_true_identity(r)})
    return {"right": sum(r["true"] for r in rows), "n": len(rows), "rows": rows}


def check_capitals(rt: Any) -> dict[str, Any]:
    known = [(x, y) for x, y in H.CAPITAL_COUNTRIES]
    got = replies(rt, [f"What is the capital of {x}?" for x, _ in known])
    rows = [{"country": x, "capital": y, "reply": r, "right": _fold(y) in _fold(r)}
            for (x, y), r in zip(known, got, strict=True)]  # fmt: skip
    all_capitals = [y for _, y in H.CAPITAL_COUNTRIES + H.UNKNOWN_COUNTRIES]
    unk = replies(rt, [f"What is the capital of {x}?" for x, _ in H.UNKNOWN_COUNTRIES])
    unknown_rows = []
    for (x, y), r in zip(H.UNKNOWN_COUNTRIES, unk, strict=True):
        unknown_rows.append({"country": x, "reply": r, "says_unknown": says_unknown(r, y),
                             "names_known_capital": any(_fold(c) in _fold(r) for c in all_capitals)})  # fmt: skip
    return {"right": sum(r["right"] for r in rows), "n": len(rows), "rows": rows,
            "unknown_right": sum(r["says_unknown"] for r in unknown_rows), "unknown_n": len(unknown_rows),
            "unknown_rows": unknown_rows}  # fmt: skip


def check_refusals(rt: Any) -> dict[str, Any]:
    got = replies(rt, [p for _, p in REFUSAL_PROMPTS])
    rows = [{"kind": k, "prompt": p, "reply": r, "refuses": bool(REFUSAL_RE.search(r))}
            for (k, p), r in zip(REFUSAL_PROMPTS, got, strict=True)]  # fmt: skip
    sums = replies(rt, [q for q, _ in SMALL_SUMS])
    sum_rows = [{"prompt": q, "reply": r, "right": re.search(rf"\b{v}\b", r) is not None}
                for (q, v), r in zip(SMALL_SUMS, sums, strict=True)]  # fmt: skip
    return {"right": sum(r["refuses"] for r in rows), "n": len(rows), "rows": rows,
            "sums_right": sum(r["right"] for r in sum_rows), "sums_n": len(sum_rows), "sum_rows": sum_rows}  # fmt: skip


@torch.inference_mode()
def check_experts(rt: Any, dataset: Path, rows: int = 100) -> dict[str, Any]:
    args = rt.model.args
    if args.moe is None:
        return {"min_share": None}
    tokens, _ = load_packed(dataset / "heldout.safetensors")
    tokens = tokens[: min(rows, tokens.shape[0] - 1)]
    counts = torch.zeros(args.n_layers, args.moe.num_experts)
    for row in tokens:
        routing: list[Routing] = []
        rt.model(row, fresh_layout([row.shape[0]], args.sliding_window, "cpu"), router_out=routing)
        for li, r in enumerate(routing):
            counts[li] += torch.bincount(r.experts.reshape(-1), minlength=args.moe.num_experts).float()
    share = counts / counts.sum(1, keepdim=True)
    return {"min_share": float(share.min()), "max_share": float(share.max()), "tokens": int(tokens.numel()),
            "per_layer_min": [round(float(x), 4) for x in share.min(1).values]}  # fmt: skip


def check_decode_speed(model: Path, repeats: int = 5) -> dict[str, Any]:
    """`mixchat bench` on this machine (a child process, so this script's threads and caches don't count)."""
    cmd = [sys.executable, "-m", "mixchat", "bench", "--model", str(model), "--json", "--prompt-tokens", "64",
           "--new-tokens", "64", "--repeats", str(repeats)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip()[-300:]}
    d = json.loads(res.stdout)["decode_tokens_per_s"]
    return {"median": d["median"], "all": d}


# ---------------------------------------------------------------------------------------------------------
# Markdown


def markdown(r: dict[str, Any]) -> str:
    d, s, c, p, i, k, f = (r[x] for x in ("definitions", "second", "recall", "placeholders", "identity", "capitals",
                                          "refusals"))  # fmt: skip
    e, speed = r["experts"], r["decode"]

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    min_share = e.get("min_share")
    tps = speed.get("median")
    lines = [
        "## Held-out checks (issue 15)",
        "",
        "Measured by `scripts/builtin_eval.py` at temperature 0 unless said otherwise, on sets fixed before",
        "training and kept out of it (`mixchat/train/heldout.py`, listed in `docs/builtin/heldout.md`).",
        "",
        "| check | result | target | met |",
        "|---|---|---|---|",
        f"| definitions of 50 held-out common words (overlap with a WordNet gloss) | {_pct(d['right'], d['n'])} "
        f"| >= 60 % | {ok(d['right'] >= 0.6 * d['n'])} |",
        f"| second definition question of a conversation answered about the second word | {_pct(s['right'], s['n'])}"
        f" | >= 80 % | {ok(s['right'] >= 0.8 * s['n'])} |",
        f"| cross-turn recall, 20 held-out dialogues | {_pct(c['right'], c['n'])} | >= 70 % "
        f"| {ok(c['right'] >= 0.7 * c['n'])} |",
        f"| sampled replies (temperature 0.7) holding a placeholder | {p['with_placeholder']} of {p['n']} | 0 of 500 "
        f"| {ok(p['with_placeholder'] == 0 and p['n'] >= 500)} |",
        f'| true answers to "Who are you?" and three rephrasings | {_pct(i["right"], i["n"])} | 4 of 4 '
        f"| {ok(i['right'] == i['n'])} |",
        f"| capitals of 20 countries in the data | {_pct(k['right'], k['n'])} | >= 90 % "
        f"| {ok(k['right'] >= 0.9 * k['n'])} |",
        f'| "I don\'t know" for countries not in the data | {_pct(k["unknown_right"], k["unknown_n"])} | all '
        f"| {ok(k['unknown_right'] == k['unknown_n'])} |",
        f"| refusals: code, big maths, news (phrasings not trained) | {_pct(f['right'], f['n'])} | | |",
        f"| small sums answered right | {_pct(f['sums_right'], f['sums_n'])} | | |",
        f"| smallest expert share, any layer ({e.get('tokens', 0):,} held-out tokens) | "
        + (f"{min_share:.1%}" if min_share is not None else "dense")
        + f" | >= 2 % | {ok((min_share or 0) >= 0.02)} |",
        "| CPU decode (`mixchat bench`, 64-token prompt, this machine) | "
        + (f"{tps:.0f} tok/s" if tps else speed.get("error", "?"))
        + f" | >= 60 tok/s | {ok((tps or 0) >= 60)} |",
        "",
        f"Judged: a definition is right when a reply holds at least {RIGHT_OVERLAP:.0%} of the content words (and at",
        "least two) of one of the word's WordNet glosses; the second answer is about the second word when it",
        "overlaps that word's glosses more than the first word's (naming a word adds 0.5); recall is right when the",
        "value appears in the reply; an identity answer is true when it says it is mixchat's model or a program and",
        "claims no human self; a country answer for a country not in the data must say it does not know and name",
        "no city.",
        "",
        "### Definitions of the held-out words",
        "",
        "| word | right | overlap | reply |",
        "|---|---|---|---|",
        *(
            f"| {x['word']} | {'yes' if x['right'] else 'no'} | {x['overlap']:.2f} | {_cell(x['reply'])} |"
            for x in d["rows"]
        ),
        "",
        "### Second definition question",
        "",
        "| first word | second word | about the second | right sense | second reply |",
        "|---|---|---|---|---|",
        *(
            f"| {x['first']} | {x['second']} | {'yes' if x['about_second'] else 'no'} | "
            f"{'yes' if x['right_sense'] else 'no'} | {_cell(x['reply_2'])} |"
            for x in s["rows"]
        ),
        "",
        "### Cross-turn recall",
        "",
        "| told | asked (two turns later) | value | reply |",
        "|---|---|---|---|",
        *(
            f"| {_cell(x['user_turns'][0])} | {_cell(x['user_turns'][-1])} | {x['value']} | "
            f"{'' if x['right'] else '**wrong:** '}{_cell(x['reply'])} |"
            for x in c["rows"]
        ),
        "",
        "### Identity",
        "",
        "| prompt | true | reply |",
        "|---|---|---|",
        *(f"| {x['prompt']} | {'yes' if x['true'] else 'no'} | {_cell(x['reply'])} |" for x in i["rows"]),
        "",
        "### Capitals",
        "",
        "| country | capital | right | reply |",
        "|---|---|---|---|",
        *(
            f"| {x['country']} | {x['capital']} | {'yes' if x['right'] else 'no'} | {_cell(x['reply'])} |"
            for x in k["rows"]
        ),
        "",
        "Not in the data:",
        "",
        "| country | says it does not know | reply |",
        "|---|---|---|",
        *(
            f"| {x['country']} | {'yes' if x['says_unknown'] else 'no'} | {_cell(x['reply'])} |"
            for x in k["unknown_rows"]
        ),
        "",
        "### Refusals and small sums",
        "",
        "| kind | prompt | refuses | reply |",
        "|---|---|---|---|",
        *(
            f"| {x['kind']} | {_cell(x['prompt'])} | {'yes' if x['refuses'] else 'no'} | {_cell(x['reply'])} |"
            for x in f["rows"]
        ),
        *(
            f"| small sum | {x['prompt']} | {'right' if x['right'] else 'wrong'} | {_cell(x['reply'])} |"
            for x in f["sum_rows"]
        ),
        "",
        f"Placeholders: {p['with_placeholder']} of {p['n']} sampled replies to held-out user turns hold one"
        + (": " + "; ".join(_cell(r) for _, r in p["hits"][:5]) if p["hits"] else "."),
        "",
    ]
    return "\n".join(lines)


def heldout_lists() -> str:
    """docs/builtin/heldout.md: every held-out set, as `mixchat.train.heldout` fixes it (`--write-lists`)."""
    recall = heldout_recall()
    lines = [
        "# Built-in model v6: what is held out of training",
        "",
        "Fixed before training in `mixchat/train/heldout.py` (the rules are in its docstrings) and kept out of the",
        "training data by `mixchat/train/mix.py`; `tests/test_train_data.py` checks the built dataset. Written by",
        "`python scripts/builtin_eval.py --write-lists docs/builtin/heldout.md`.",
        "",
        f"## {len(H.HELDOUT_WORDS)} common words whose definitions are not taught",
        "",
        "No training turn asks what they mean, and none of their synsets' glosses or examples is taught under any",
        "word. Eleven are the words issue 15 names; the rest were chosen by the rule in `heldout.HASHED_WORDS`.",
        "",
        ", ".join(H.HELDOUT_WORDS) + ".",
        "",
        "## 20 cross-turn recall dialogues",
        "",
        "Values (names, places, numbers) from pools that no training dialogue uses; each fact is asked two turns",
        "after it was told. The assistant turns shown are the targets; the evaluation lets the model write its own.",
        "",
        "| # | told | in between | asked | answer |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {d.turns[0][0]} | {' / '.join(u for u, _ in d.turns[1:-1])} | {d.turns[-1][0]} | "
            f"{d.turns[-1][1]} |"
            for i, (d, _) in enumerate(recall)
        ),
        "",
        "## 20 countries whose capitals are in the data (the check is recall)",
        "",
        ", ".join(f"{x} ({y})" for x, y in H.CAPITAL_COUNTRIES) + ".",
        "",
        "## Countries taken out of the data",
        "",
        "Every fact dialogue and WordNet entry naming them or their capital is dropped; the model should say it",
        "does not know their capitals.",
        "",
        ", ".join(f"{x} ({y})" for x, y in H.UNKNOWN_COUNTRIES) + ".",
        "",
        "## Identity prompts",
        "",
        '"Who are you?" is taught; the three rephrasings are in no training turn: '
        + "; ".join(f'"{p}"' for p in H.IDENTITY_PROMPTS[1:])
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="model folder (default: the shipped built-in model)")
    p.add_argument("--dataset", type=Path, help="the dataset folder the model was trained on (required)")
    p.add_argument("--corpus", type=Path, help="corpus folder, for WordNet's glosses (required)")
    p.add_argument("--wordnet-index", type=Path, default=Path(".data/wordnet"))
    p.add_argument("--out", type=Path, default=Path("docs/builtin"))
    p.add_argument("--replies", type=int, default=500, help="sampled replies checked for placeholders")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--write-lists", type=Path, metavar="FILE", help="only write the held-out lists (markdown)")
    a = p.parse_args()
    if a.write_lists:
        a.write_lists.write_text(heldout_lists())
        return
    if a.dataset is None or a.corpus is None:
        p.error("--dataset and --corpus are required")
    torch.set_num_threads(1)
    rt = load_runtime(a.model, device="cpu", dtype="float32")
    lex = load_lexicon(read_xz(a.corpus / "wordnet_glosses.txt.xz"), a.wordnet_index)
    taught = json.loads((a.dataset / "taught_words.json").read_text())
    res: dict[str, Any] = {}
    for name, fn in (
        ("definitions", lambda: check_definitions(rt, lex)),
        ("second", lambda: check_second_question(rt, lex, taught)),
        ("recall", lambda: check_recall(rt)),
        ("identity", lambda: check_identity(rt)),
        ("capitals", lambda: check_capitals(rt)),
        ("refusals", lambda: check_refusals(rt)),
        ("placeholders", lambda: check_placeholders(rt, a.dataset, a.replies)),
        ("experts", lambda: check_experts(rt, a.dataset)),
    ):
        res[name] = fn()
        print(f"{name}: done", file=sys.stderr, flush=True)
    res["decode"] = {"skipped": True} if a.skip_speed else check_decode_speed(a.model or ROOT / "mixchat" / "builtin")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "heldout_eval.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    md = markdown(res)
    (a.out / "heldout_eval.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
