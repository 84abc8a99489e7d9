"""The v6 training mix: chat, all common WordNet words, the fact files and the project's own templates.

`build_mix` returns the train dialogues (repeats included, each repeat regrouped and rephrased) and the
held-out dialogues (for the held-out loss), with the held-out evaluation sets of `heldout.py` kept out of
training. Why each part is there and how often it repeats is said next to its constant below.

Run ``python -m mixchat.train.mix DATA_DIR`` for a per-source summary without building tokens.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixchat.train import heldout as H
from mixchat.train.corpus import Dialogue, load_corpus, parse_chat, read_xz, split, word_counts
from mixchat.train.synthetic import (
    capital_dialogues,
    heldout_recall,
    identity_dialogues,
    recall_dialogues,
    refusal_dialogues,  # fmt: skip
)
from mixchat.train.wordnet import (
    Lexicon,
    WordItem,
    build_items,
    common_words,
    definition_dialogues,
    excluded_synsets,
    has_index,
    load_lexicon,
    rest_of_wordnet,
)

FACT_FILES = {"quiz": "quiz_facts.txt.xz", "country": "country_facts.txt.xz"}
CHAT_SOURCES = ("persona", "chitchat", "chatterbot", "coffee")

DEFINITION_TIERS: tuple[tuple[int, int], ...] = ((300, 12), (30, 6), (0, 3))
"""(minimum chat frequency, repeats per epoch) for the common words, first match wins. The commonest words
are the ones people ask about, so they get the most repeats: v5 learnt 83 % of 495 words seen about 150
times, and 44 % of 775 seen about 90 times. v6 spreads its definition tokens over about 24,000 words, so
the tiers put the bulk of the repeats on the 2,000 or so that chat uses most."""
REST_REPEATS = 1
"""WordNet synsets no common word teaches (rare words, proper nouns): seen once, as reading."""
FACT_REPEATS = 6
"""The two fact files, as given (their own phrasings), per epoch."""
CAPITAL_REPEATS = 8
"""Capitals drilled in the project's phrasings and groupings, per epoch: a capital must be recalled
whichever way it is asked (issue: 90 % of 20 countries)."""
RECALL_PER_EPOCH = 24_000
"""Cross-turn recall dialogues per epoch (10 kinds of fact); each is new (fresh values and fillers)."""
IDENTITY_REPEATS = 60
"""Identity and limits (28 dialogues a repeat): enough that "Who are you?" outweighs persona chat's
invented selves (v5: 0 of 24 true answers)."""
REFUSAL_REPEATS = 12
"""Code, big maths and news refusals and small sums (about 120 dialogues a repeat)."""

_CAPITAL_RES = (
    re.compile(r"^The capital(?: city)? of (?P<x>.+) is (?P<y>.+)\.$"),
    re.compile(r"^(?P<y>.+) is the capital(?: city)? of (?P<x>.+)\.$"),
)


@dataclass
class Mix:
    """What `build_mix` made: dialogues for training and for the held-out loss, and its bookkeeping."""

    train: list[Dialogue]
    heldout: list[Dialogue]
    taught_words: list[str]
    stats: dict[str, Any] = field(default_factory=dict)


def mentions_unknown(text: str) -> bool:
    """True if `text` names a country of `heldout.UNKNOWN_COUNTRIES` or its capital."""
    return any(x.removeprefix("the ") in text or y in text for x, y in H.UNKNOWN_COUNTRIES)


def load_facts(data_dir: Path, drops: dict[str, Counter[str]]) -> list[Dialogue]:
    """The fact files' dialogues, without the countries kept out of the data."""
    out: list[Dialogue] = []
    for name, fn in FACT_FILES.items():
        path = data_dir / fn
        if not path.is_file():
            continue
        ds, dropped = parse_chat(read_xz(path), name, labels=("User", "Assistant"))
        kept = [d for d in ds if not mentions_unknown(d.text())]
        dropped["unknown country"] += len(ds) - len(kept)
        drops[name] = dropped
        out += kept
    return out


def capital_pairs(facts: Sequence[Dialogue]) -> list[tuple[str, str]]:
    """(country or territory, capital) from the fact files' answers, first answer per place kept."""
    pairs: dict[str, str] = {}
    for d in facts:
        for _, a in d.turns:
            if a.startswith("In Tolkien's"):
                continue
            m = next((m for rx in _CAPITAL_RES if (m := rx.match(a))), None)
            if m is not None:
                pairs.setdefault(m["x"], m["y"])
    return sorted(pairs.items())


def _tier_repeats(word: str, freq: Counter[str]) -> int:
    f = freq[word] if " " not in word else 0
    return next(r for lo, r in DEFINITION_TIERS if f >= lo)


def definitions(
    lex: Lexicon, chat_train: Sequence[Dialogue], repeats_scale: float = 1.0
) -> tuple[list[Dialogue], list[Dialogue], list[str], dict[str, Any]]:
    """(train definition dialogues, held-out-word dialogues, taught words, stats)."""
    freq = word_counts(chat_train)
    banned = excluded_synsets(lex, H.HELDOUT_WORDS)
    banned |= {k for k, s in lex.synsets.items() if mentions_unknown(f"{s.lemma} {s.gloss} {' '.join(s.examples)}")}
    held = set(H.HELDOUT_WORDS)
    words = [w for w in common_words(lex, freq) if w not in held]
    items = build_items(lex, words, banned)
    by_repeats: dict[int, list[WordItem]] = {}
    for it in items:
        r = max(1, round(_tier_repeats(it.word, freq) * repeats_scale))
        by_repeats.setdefault(r, []).append(it)
    train: list[Dialogue] = []
    for r, group in sorted(by_repeats.items()):
        for rep in range(r):
            train += definition_dialogues(group, rep)
    taught = {s.synset for it in items for s in it.senses}
    rest = rest_of_wordnet(lex, taught, banned)
    for rep in range(REST_REPEATS):
        train += definition_dialogues(rest, 1000 + rep, source="wordnet_rest")
    held_items = build_items(lex, H.HELDOUT_WORDS, set())
    heldout = definition_dialogues(held_items, 0, source="wordnet_heldout")
    stats = {
        "sense_order": lex.source,
        "common_words": len(words),
        "taught_words": len(items),
        "taught_senses": sum(len(it.senses) for it in items),
        "words_per_repeats": {str(r): len(g) for r, g in sorted(by_repeats.items())},
        "rest_of_wordnet_synsets": len(rest),
        "banned_synsets": len(banned),
    }
    return train, heldout, [it.word for it in items], stats


def build_mix(
    data_dir: Path,
    wordnet_index: Path | None = None,
    *,
    scale: float = 1.0,
    drops: dict[str, Counter[str]] | None = None,
) -> Mix:
    """Read the corpus folder and make the v6 mix (see the module docstring).

    `wordnet_index` is the folder with WordNet's index files (`wordnet.py`); None looks in DATA_DIR/wordnet
    and then .data/wordnet. `scale` multiplies every repeat count and the templated dialogue counts: the
    CPU checks and tests use a small scale, the built-in model 1.0.
    """
    data_dir = Path(data_dir)
    drops = {} if drops is None else drops
    chat = load_corpus(data_dir, report=drops, sources=CHAT_SOURCES)
    chat_train, chat_held = split(chat)
    facts = load_facts(data_dir, drops)

    def reps(n: int) -> int:
        return max(1, round(n * scale))

    train = list(chat_train)
    train += [d for _ in range(reps(FACT_REPEATS)) for d in facts]
    pairs = capital_pairs(facts)
    for r in range(reps(CAPITAL_REPEATS)):
        train += capital_dialogues(pairs, r, unknown=reps(120))
    recall_held = heldout_recall()
    train += recall_dialogues(reps(RECALL_PER_EPOCH), 0)
    for r in range(reps(IDENTITY_REPEATS)):
        train += identity_dialogues(r)
    for r in range(reps(REFUSAL_REPEATS)):
        train += refusal_dialogues(r)
    stats: dict[str, Any] = {"capital_pairs": len(pairs)}
    taught: list[str] = []
    wn_path = data_dir / "wordnet_glosses.txt.xz"
    heldout = list(chat_held) + [d for d, _ in recall_held]
    if wn_path.is_file():
        index = wordnet_index if wordnet_index is not None else _default_index(data_dir)
        lex = load_lexicon(read_xz(wn_path), index)
        defs, held_defs, taught, wn_stats = definitions(lex, chat_train, scale)
        train += defs
        heldout += held_defs
        stats["wordnet"] = wn_stats | {"index": str(index) if has_index(index) else None}
    return Mix(train, heldout, taught, stats)


def _default_index(data_dir: Path) -> Path | None:
    for candidate in (data_dir / "wordnet", Path(".data/wordnet")):
        if has_index(candidate):
            return candidate
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: per-source dialogue and turn counts of the mix."""
    p = argparse.ArgumentParser(prog="python -m mixchat.train.mix", description=__doc__.split("\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--wordnet-index", type=Path)
    p.add_argument("--scale", type=float, default=1.0)
    a = p.parse_args(argv)
    mix = build_mix(a.data_dir, a.wordnet_index, scale=a.scale)
    for name, ds in (("train", mix.train), ("heldout", mix.heldout)):
        c: Counter[str] = Counter()
        t: Counter[str] = Counter()
        ch: Counter[str] = Counter()
        for d in ds:
            c[d.source] += 1
            t[d.source] += len(d.turns)
            ch[d.source] += d.n_chars()
        for src in sorted(c):
            print(f"{name:8} {src:16} {c[src]:>9,} dialogues {t[src]:>10,} turns {ch[src]:>13,} chars")
    print(mix.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
