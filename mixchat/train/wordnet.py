"""WordNet for the built-in model: every common word, its most frequent senses first, in chat-shaped turns.

Why the Debian index files: the corpus's `wordnet_glosses.txt.xz` lists synsets in the order of WordNet's
data files (by byte offset), which says nothing about which sense of a word is common ("doctor" comes first
as the children's game). WordNet's own sense order and its tagged sense counts (SemCor frequencies) are in
the `index.{noun,verb,adj,adv}` and `cntlist.rev` files of Debian's `wordnet-base` package, which the
corpus file was made from (SOURCES.md: wordnet-base 1:3.0-37). `scripts/fetch_wordnet_index.sh` gets them
(`apt-get download` + `dpkg-deb -x`, nothing installed) into `.data/wordnet/`, xz-compressed.

How the two are joined: a data file lists its synsets in offset order, and every synset has at least one
word in the index, so sorting the offsets found in `index.noun` gives the order of the noun lines in the
corpus file. `load_lexicon` checks the join: each line's head word must be one of its synset's words.

The index also gives every word of a synset, not only the head word the corpus file names, so "auto" is
defined with the gloss of the "car" synset.
"""

from __future__ import annotations

import lzma
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mixchat.train.corpus import (
    POS_ARTICLE,
    STOPWORDS,
    Dialogue,
    Sense,
    normalize,
    parse_wordnet_line,
    stable_hash,
    with_example,
)

POS_CODES = {"noun": "n", "verb": "v", "adjective": "a", "adverb": "r"}
"""Part-of-speech names in the corpus file -> WordNet's letters (index file suffixes: noun, verb, adj, adv)."""
_INDEX_FILES = {"n": "index.noun", "v": "index.verb", "a": "index.adj", "r": "index.adv"}
_SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}  # sense-key digits; 5 = adjective satellite
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*")


@dataclass(frozen=True)
class WordSense:
    """One sense of one word: the synset's gloss and examples, its sense number and tagged count."""

    word: str  # as asked: lower case, spaces between parts
    pos: str  # "noun", "verb", "adjective", "adverb"
    gloss: str
    examples: tuple[str, ...]
    sense_number: int  # WordNet's order within (word, pos), 1 = most frequent
    count: int  # times tagged in WordNet's sense-tagged texts (0 if never)
    synset: tuple[str, int]  # (pos letter, position in the corpus file's lines of that pos)


@dataclass
class Lexicon:
    """Every word of WordNet with its senses, most frequent first (`senses`), and where the order came from."""

    senses: dict[str, list[WordSense]]
    synsets: dict[tuple[str, int], Sense]
    source: str  # "wordnet-index" (Debian's index + cntlist.rev) or "file" (no index: file order)


def _open_text(folder: Path, name: str) -> str:
    """`name` or `name.xz` from `folder`."""
    plain, packed = folder / name, folder / f"{name}.xz"
    if plain.is_file():
        return plain.read_text(encoding="utf-8")
    with lzma.open(packed, "rt", encoding="utf-8") as f:
        return f.read()


def has_index(folder: Path | None) -> bool:
    return folder is not None and all(
        (folder / n).is_file() or (folder / f"{n}.xz").is_file() for n in (*_INDEX_FILES.values(), "cntlist.rev")
    )


def parse_index(text: str) -> Iterator[tuple[str, list[int]]]:
    """`index.pos` lines -> (lemma, synset offsets in sense order). Licence lines start with spaces."""
    for line in text.split("\n"):
        if not line or line.startswith(" "):
            continue
        f = line.split()
        n_ptr = int(f[3])
        n_senses = int(f[4 + n_ptr])
        offsets = [int(x) for x in f[6 + n_ptr : 6 + n_ptr + n_senses]]
        yield f[0], offsets


def parse_cntlist(text: str) -> dict[tuple[str, str, int], int]:
    """`cntlist.rev` (`sense_key sense_number tag_count`) -> {(lemma, pos letter, sense number): count}."""
    out: dict[tuple[str, str, int], int] = {}
    for line in text.split("\n"):
        f = line.split()
        if len(f) != 3 or "%" not in f[0]:
            continue
        lemma, rest = f[0].split("%", 1)
        key = (lemma, _SS_TYPE[rest[0]], int(f[1]))
        out[key] = out.get(key, 0) + int(f[2])
    return out


def _corpus_synsets(glosses_text: str) -> dict[str, list[Sense]]:
    """The corpus file's lines grouped by part of speech, in file order."""
    by_pos: dict[str, list[Sense]] = {p: [] for p in POS_CODES.values()}
    for line in glosses_text.split("\n"):
        sense = parse_wordnet_line(line)
        if sense is not None:
            by_pos[POS_CODES[sense.pos]].append(sense)
    return by_pos


def _word(lemma: str) -> str:
    return lemma.replace("_", " ")


def load_lexicon(glosses_text: str, index_dir: Path | None) -> Lexicon:
    """Join the corpus's glosses with WordNet's index (see the module docstring); without an index, every
    head word gets its synsets in file order (what v5 had), and `source` says so."""
    by_pos = _corpus_synsets(glosses_text)
    synsets = {(p, k): s for p, lines in by_pos.items() for k, s in enumerate(lines)}
    senses: dict[str, list[WordSense]] = {}
    if not has_index(index_dir):
        numbering: Counter[tuple[str, str]] = Counter()
        for (p, k), s in synsets.items():
            w = s.lemma.lower()
            numbering[w, p] += 1
            senses.setdefault(w, []).append(WordSense(w, s.pos, s.gloss, s.examples, numbering[w, p], 0, (p, k)))
        return Lexicon(senses, synsets, "file")
    assert index_dir is not None
    counts = parse_cntlist(_open_text(index_dir, "cntlist.rev"))
    for p, fname in _INDEX_FILES.items():
        entries = list(parse_index(_open_text(index_dir, fname)))
        offsets = sorted({o for _, offs in entries for o in offs})
        if len(offsets) != len(by_pos[p]):
            raise ValueError(f"{fname} names {len(offsets)} synsets, the corpus file has {len(by_pos[p])} {p} lines")
        position = {o: k for k, o in enumerate(offsets)}
        members: dict[int, set[str]] = {}
        for lemma, offs in entries:
            for number, o in enumerate(offs, start=1):
                k = position[o]
                members.setdefault(k, set()).add(lemma)
                s = by_pos[p][k]
                c = counts.get((lemma, p, number), 0)
                senses.setdefault(_word(lemma), []).append(WordSense(_word(lemma), s.pos, s.gloss, s.examples,
                                                                     number, c, (p, k)))  # fmt: skip
        bad = [k for k, s in enumerate(by_pos[p]) if s.lemma.lower().replace(" ", "_") not in members.get(k, ())]
        if bad:
            k = bad[0]
            raise ValueError(f"{fname}: {len(bad)} corpus lines do not match the index, e.g. line {k} "
                             f"{by_pos[p][k].lemma!r}")  # fmt: skip
    for w, ss in senses.items():
        senses[w] = frequency_order(ss)
    return Lexicon(senses, synsets, "wordnet-index")


def frequency_order(senses: Sequence[WordSense]) -> list[WordSense]:
    """Most frequent first: by tagged count; ties (most senses are never tagged) by sense number, the part
    of speech with more tagged uses, then the one with more senses ("great" is mostly an adjective)."""
    per_pos_count: Counter[str] = Counter()
    per_pos_senses: Counter[str] = Counter()
    for s in senses:
        per_pos_count[s.pos] += s.count
        per_pos_senses[s.pos] += 1
    order = ("noun", "verb", "adjective", "adverb")
    return sorted(senses, key=lambda s: (-s.count, s.sense_number, -per_pos_count[s.pos],
                                         -per_pos_senses[s.pos], order.index(s.pos)))  # fmt: skip


def is_askable(word: str) -> bool:
    """A word a user would ask about: lower case, letters and hyphens, one or two parts, not closed-class."""
    parts = word.split(" ")
    return len(parts) <= 2 and all(_WORD_RE.fullmatch(p) for p in parts) and word not in STOPWORDS


def common_words(lex: Lexicon, chat_freq: Counter[str], min_chat: int = 3, min_tagged: int = 1) -> list[str]:
    """The words taught with repeats: seen `min_chat` times in the chat text (single words), or tagged
    `min_tagged` times in WordNet's own texts (which catches common two-word entries such as "ice cream").
    Most common first (chat frequency, then tagged count), so a cap keeps the everyday ones."""
    tagged = {w: sum(s.count for s in ss) for w, ss in lex.senses.items()}
    out = [
        w for w in lex.senses
        if is_askable(w) and ((" " not in w and chat_freq[w] >= min_chat) or tagged[w] >= min_tagged)
    ]  # fmt: skip
    return sorted(out, key=lambda w: (-chat_freq[w] if " " not in w else 0, -tagged[w], w))


def taught_senses(senses: Sequence[WordSense], k: int = 3, min_share: float = 0.1) -> list[WordSense]:
    """The senses to teach for a word, in frequency order: always the first; then up to `k - 1` more that
    were tagged at least `min_share` as often as the first (a rare sense is not worth a small model's
    capacity), or, for an untagged word, the first sense of a second part of speech."""
    if not senses:
        return []
    first = senses[0]
    out = [first]
    for s in senses[1:]:
        if len(out) >= k:
            break
        frequent = first.count > 0 and s.count >= max(1, min_share * first.count)
        other_pos = not first.count and s.sense_number == 1 and all(s.pos != o.pos for o in out)
        if frequent or other_pos:
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------------------
# Definition dialogues

QUESTIONS = (
    "What does {w} mean?",
    "What is the meaning of {w}?",
    "Define {w}.",
    "What does the word {w} mean?",
    "what does {w} mean",
    "Can you tell me what {w} means?",
    "What's the definition of {w}?",
    "{w}? What does that mean?",
)
"""First-question phrasings (the v5 list: "What does W mean?" is the card's and the evaluation's)."""
NEXT_QUESTIONS = (
    "And what does {w} mean?",
    "What about {w}?",
    "What does {w} mean?",
    "And {w}?",
    "Now define {w}.",
    "How about the word {w}?",
    "Next one: {w}. What does it mean?",
    "What is the meaning of {w}?",
)
"""Phrasings for a second or later word in the same conversation: the answer must be about the new word."""
FOLLOW_UPS = (
    "Does it have another meaning?",
    "What else can it mean?",
    "Any other meaning?",
    "Is there another sense of the word?",
)
"""Asking for another sense of the word asked about last."""


def answer(sense: WordSense, variant: int, previous_pos: str | None, max_chars: int = 400) -> str | None:
    """A one- or two-sentence definition restating the word, with the first example if it fits.

    `previous_pos` is the part of speech of the previous answer about the same word (None for the first).
    The word is written bare, as in the question, so it is the same token there and here: the v5 model
    recalled 44 % of the glosses with the word restated against 19 % with "it".
    """
    w, pos, gloss = sense.word, sense.pos, sense.gloss
    if previous_pos == pos:
        head = f"{w} can also mean: {gloss}."
    elif previous_pos is not None:
        head = f"{w} can also be {POS_ARTICLE[pos]}, meaning: {gloss}."
    elif variant % 2 == 0:
        head = f"{w} ({pos}) means: {gloss}."
    else:
        head = f"As {POS_ARTICLE[pos]}, {w} means {gloss}."
    return with_example(head, sense.examples, max_chars)


@dataclass(frozen=True)
class WordItem:
    """One word to teach and its senses in the order they are given."""

    word: str
    senses: tuple[WordSense, ...]


def word_turns(item: WordItem, first: bool, variant: int, max_senses: int) -> list[tuple[str, str]]:
    """The turns about one word: its question (first-word or next-word phrasing), then follow-ups."""
    h = stable_hash(f"{item.word}:{variant}")
    templates = QUESTIONS if first else NEXT_QUESTIONS
    turns: list[tuple[str, str]] = []
    for k, sense in enumerate(item.senses[:max_senses]):
        a = answer(sense, h >> 8, item.senses[k - 1].pos if k else None)
        if a is None:
            break
        q = templates[(h + variant) % len(templates)].format(w=item.word) if k == 0 else FOLLOW_UPS[(h >> 4) % 4]
        turns.append((q, a))
    return turns


def definition_dialogues(items: Sequence[WordItem], repeat: int, source: str = "wordnet") -> list[Dialogue]:
    """All `items` in dialogues of 1-4 words, grouped and phrased afresh for each `repeat`.

    Why several words per dialogue: with one word per dialogue, v5 answered a second "What does W mean?"
    about the first word. Regrouping on every repeat means no word always follows the same neighbour, so
    the answer can only come from the question just asked. Whether a word gets its follow-up senses also
    varies with the repeat, so "Does it have another meaning?" is asked after first and later words alike.
    """
    order = sorted(items, key=lambda it: stable_hash(f"defs:{repeat}:{it.word}"))
    out: list[Dialogue] = []
    i = 0
    while i < len(order):
        h = stable_hash(f"group:{repeat}:{order[i].word}")
        n = (1, 2, 2, 3, 3, 4)[h % 6]
        group = order[i : i + n]
        i += n
        turns: list[tuple[str, str]] = []
        for j, item in enumerate(group):
            senses = 1 + (stable_hash(f"senses:{repeat}:{item.word}") % 3 != 0) * (len(item.senses) - 1)
            turns += word_turns(item, j == 0, repeat, senses)
        if turns:
            out.append(Dialogue(turns, source))
    return out


def excluded_synsets(lex: Lexicon, words: Iterable[str]) -> set[tuple[str, int]]:
    """Every synset of the given words: a held-out word's glosses must not be taught under a synonym either
    (teaching "breadstuff means: food made from dough ..." would teach the very answer the check looks for)."""
    return {s.synset for w in words for s in lex.senses.get(w, ())}


def build_items(
    lex: Lexicon,
    words: Iterable[str],
    banned: set[tuple[str, int]],
    max_senses: int = 3,
) -> list[WordItem]:
    """WordItems for `words`, leaving out banned synsets (a word left with no sense is dropped)."""
    out: list[WordItem] = []
    for w in words:
        senses = [s for s in lex.senses.get(w, ()) if s.synset not in banned]
        picked = taught_senses(senses, max_senses)
        if picked:
            out.append(WordItem(w, tuple(picked)))
    return out


def rest_of_wordnet(lex: Lexicon, taught: set[tuple[str, int]], banned: set[tuple[str, int]]) -> list[WordItem]:
    """One item per synset that no common word teaches, under its head word: "all of WordNet" seen once.

    A small model will not memorise these from one reading, but they are English sentences about a word,
    and they teach what glosses of rarer words look like. Proper nouns (capitalised heads) are included:
    "What does Oslo mean?" has a fine WordNet answer.
    """
    out: list[WordItem] = []
    for key, s in lex.synsets.items():
        if key in taught or key in banned or len(s.lemma.split(" ")) > 3:
            continue
        out.append(WordItem(s.lemma, (WordSense(s.lemma, s.pos, s.gloss, s.examples, 1, 0, key),)))
    return out


def content_words(text: str) -> set[str]:
    """Lower-case words of `text` that carry meaning: not closed-class, longer than two letters."""
    return {w for w in _WORD_RE.findall(normalize(text).lower()) if w not in STOPWORDS and len(w) > 2}


def gloss_hits(reply: str, gloss: str) -> tuple[int, int]:
    """(content words of `gloss` found in `reply`, content words of `gloss`). A word counts when the reply
    has it or a word with the same first five letters ("larger" for "large"), so inflections match.

    Used by the evaluation to judge a definition "recognisably right": a reply that shares most of a gloss's
    content words names that sense.
    """
    g = content_words(gloss)
    r = set(_WORD_RE.findall(reply.lower()))
    stems = {w[:5] for w in r}
    return sum(1 for w in g if w in r or w[:5] in stems), len(g)


def gloss_overlap(reply: str, gloss: str) -> float:
    """Share of the gloss's content words found in the reply (see `gloss_hits`)."""
    hits, n = gloss_hits(reply, gloss)
    return hits / n if n else 0.0
