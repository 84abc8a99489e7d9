"""Turn the raw training sources into chat dialogues of (user, assistant) turns.

The built-in model is a chat model, so everything it is trained on is shaped like a conversation the
app will hold: a user message followed by an assistant reply, repeated. The sources come in a few plain
formats (see the corpus's SOURCES.md):

- chit-chat (`A:` / `B:` lines, one dialogue per paragraph): persona chat, human chats, chatterbot Q/A;
- task dialogues (`User:` / `Assistant:`): coffee ordering;
- WordNet (`lemma (pos): gloss; "example"`, one synset a line): turned into "what does X mean?" turns.

Everything here is deterministic (hashes, not random state), so a rebuild gives byte-identical data and
the held-out split never leaks into training when the corpus is re-read.

Run ``python -m mixchat.train.corpus DATA_DIR`` for a per-source summary.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Source name -> file name. The source name is what statistics are keyed by.
SOURCE_FILES: dict[str, str] = {
    "persona": "synthetic_persona_chat.txt.xz",
    "chitchat": "chitchat.txt.xz",
    "chatterbot": "chatterbot_english.txt.xz",
    "coffee": "taskmaster4_coffee.txt.xz",
    "wordnet": "wordnet_glosses.txt.xz",
}

MAX_TURN_CHARS = 400
"""Longest turn kept. Longer turns are cut at a sentence end, or split the dialogue (see `_clip`)."""

MIN_DIALOGUE_MEAN_CHARS = 3
"""Dialogues whose messages average fewer characters are noise (one source has a sentence typed one
letter per message) and are dropped."""

WORDNET_CAP = 900
"""At most this many WordNet question/answer turns. An 18 M-parameter model recalls only so many glosses:
with 6,000 turns seen 5 times each it got the format right and most glosses wrong, and with 1,400 turns
seen 16 times it recalled 44 % of them. So the list is cut to the commonest words (about 500 of them) and
each is seen more often (28 times per epoch in v5; v6 builds its WordNet turns in `mix`)."""

WORDNET_MAX_SENSES = 2
"""Senses taught per word: the main one answers the question, a second one answers a follow-up."""

HELDOUT_PER_10K = 200
"""Held-out share in 1/10,000: 2 %."""

# A small, mixed list of first names used to fill persona-chat name placeholders.
FIRST_NAMES: tuple[str, ...] = (
    "Alex", "Maria", "James", "Sofia", "David", "Emma", "Daniel", "Olivia", "Michael", "Ava",
    "Lucas", "Mia", "Ethan", "Chloe", "Noah", "Grace", "Samuel", "Hannah", "Ryan", "Zoe",
    "Omar", "Leila", "Carlos", "Ana", "Kenji", "Yuki", "Ravi", "Priya", "Ben", "Nora",
    "Liam", "Ella", "Jack", "Lily", "Marcus", "Sarah", "Tom", "Julia", "Victor", "Amy",
)  # fmt: skip

# Closed-class English words. WordNet has entries for some of them, but only in surprising senses ("in"
# = inch, "he" = helium, "do" = a musical note): as the answer to "what does 'in' mean?" those teach the
# model something misleading, so such lemmas never become questions.
STOPWORDS: frozenset[str] = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could",
    "did", "didn", "do", "does", "doesn", "doing", "don", "down", "during", "each", "few", "for", "from",
    "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself",
    "his", "how", "i", "if", "in", "into", "is", "isn", "it", "its", "itself", "just", "ll", "me", "more",
    "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other",
    "our", "ours", "ourselves", "out", "over", "own", "re", "s", "same", "she", "should", "so", "some",
    "such", "t", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these",
    "they", "this", "those", "through", "to", "too", "under", "until", "up", "us", "ve", "very", "was",
    "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would",
    "you", "your", "yours", "yourself", "yourselves", "ok", "okay", "oh", "yeah", "yes", "lol", "haha",
    "hi", "hey", "hello", "bye", "m", "d", "o", "y", "ma", "won", "wouldn", "shouldn", "couldn", "wasn",
    "weren", "aren", "hasn", "haven", "hadn", "mustn", "needn", "shan", "mightn"
})  # fmt: skip

_WS_RE = re.compile(r"\s+")
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"'})
_SENT_END_RE = re.compile(r"[.!?][\"')\]]*(?=\s)")
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*")
_LEMMA_RE = re.compile(r"[a-z]+(?:-[a-z]+)*")
_WORDNET_RE = re.compile(r"^(?P<lemma>.+?) \((?P<pos>noun|verb|adjective|adverb)\): (?P<rest>.*)$")


@dataclass
class Dialogue:
    """One conversation: `turns[i] = (user message, assistant reply)`.

    `source` names the corpus file it came from (a key of `SOURCE_FILES`); it only feeds statistics.
    """

    turns: list[tuple[str, str]]
    source: str = field(default="", compare=False)

    def text(self) -> str:
        """The dialogue as one string; what the held-out split and de-duplication hash."""
        return "\n".join(f"{u}\n{a}" for u, a in self.turns)

    def n_chars(self) -> int:
        return sum(len(u) + len(a) for u, a in self.turns)


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def stable_hash(text: str) -> int:
    """A 64-bit hash that, unlike `hash()`, is the same in every process (no PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def normalize(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces and straighten curly quotes.

    Curly and straight quotes mean the same; the small model should not spend capacity on two spellings.
    """
    return _WS_RE.sub(" ", text.translate(_QUOTES)).strip()


def _clip(text: str, max_chars: int) -> str | None:
    """Fit a turn into `max_chars`: cut at the last sentence end, or give up (None).

    Cutting mid-sentence would teach the model to stop replies mid-thought, so an over-long turn without
    a sentence end between a third of `max_chars` and `max_chars` is rejected instead; the caller then
    splits the dialogue around it.
    """
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    ends = [m.end() for m in _SENT_END_RE.finditer(head) if m.end() <= max_chars]
    if ends and ends[-1] >= max_chars // 3:
        return head[: ends[-1]].rstrip()
    return None


def read_xz(path: Path) -> str:
    """Read one xz-compressed UTF-8 corpus file (the corpus is never copied, only streamed)."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------------------
# Speaker-line formats


def parse_speaker_blocks(text: str, labels: Sequence[str]) -> Iterator[list[tuple[int, str]]]:
    """Yield each paragraph of a speaker-line file as [(speaker index, message), ...].

    A line `"<label>: text"` starts a message, other lines continue the current one. Blank lines end
    the paragraph only when the next non-blank line starts a message (or the file ends): the chatterbot
    file holds answers like "Here's a stack:", a blank line, then a code block with blank lines of its
    own, and all of that is one message. Inside a ``` fence nothing starts a message.
    """
    prefixes = [(i, f"{label}:") for i, label in enumerate(labels)]

    def speaker_of(line: str) -> int | None:
        return next((i for i, prefix in prefixes if line.startswith(prefix)), None)

    block: list[tuple[int, str]] = []
    pending_blank = 0  # blank lines seen since the last non-blank line
    in_fence = False
    for line in text.split("\n"):
        if not line.strip():
            pending_blank += 1
            continue
        speaker = None if in_fence else speaker_of(line)
        if speaker is not None:
            if pending_blank and block:
                yield block
                block = []
            prefix_len = len(prefixes[speaker][1])
            block.append((speaker, line[prefix_len:]))
        elif block:
            last, msg = block[-1]
            block[-1] = (last, msg + "\n" * (pending_blank + 1) + line)
        # else: a stray line before any speaker label; nothing to attach it to
        pending_blank = 0
        if line.strip().startswith("```"):
            in_fence = not in_fence
    if block:
        yield block


def messages_to_dialogues(
    messages: Sequence[tuple[int, str]],
    source: str,
    *,
    skip_first: bool = False,
    max_chars: int = MAX_TURN_CHARS,
) -> list[Dialogue]:
    """Pair a speaker-labelled message list into dialogues of (user, assistant) turns.

    Whoever speaks first is the user. Consecutive messages of one speaker are joined (people often send
    two short lines in a row). With `skip_first`, the opening message is dropped, so the *other* speaker
    becomes the user: used on part of the chit-chat so the model sees both sides of a conversation. A
    trailing user message with no reply is dropped, and so are messages without a letter or digit ("",
    "...", but not "7", a fine answer to a trivia question). A message too long to clip (see `_clip`) is
    dropped and splits the conversation: the turns before it form one dialogue, and pairing starts afresh
    after it, so long human chats are not lost to one monologue in the middle.
    """
    merged: list[tuple[int, str]] = []
    for speaker, raw in messages:
        msg = normalize(raw)
        if not any(c.isalnum() for c in msg):
            continue
        if merged and merged[-1][0] == speaker:
            merged[-1] = (speaker, merged[-1][1] + " " + msg)
        else:
            merged.append((speaker, msg))
    if skip_first:
        merged = merged[1:]
    out: list[Dialogue] = []
    turns: list[tuple[str, str]] = []

    def flush() -> None:
        if turns and sum(len(u) + len(a) for u, a in turns) >= MIN_DIALOGUE_MEAN_CHARS * 2 * len(turns):
            out.append(Dialogue(list(turns), source))
        turns.clear()

    k = 0
    while k + 1 < len(merged):
        user, reply = _clip(merged[k][1], max_chars), _clip(merged[k + 1][1], max_chars)
        if user is not None and reply is not None:
            turns.append((user, reply))
            k += 2
            continue
        flush()
        k += 1 if user is None else 2
    flush()
    return out


# ---------------------------------------------------------------------------------------------------------
# Persona-chat placeholders

_NUMBERED_NAME_RE = re.compile(r"\[user[ _]?([12])(?:'s)?(?:[ _]?(?:user)?name)?\]", re.IGNORECASE)
_GENERIC_NAME_RE = re.compile(
    r"\[(name|username|user[ _]name|your name|their name|insert name|insert your name(?: here)?|"
    r"insert their name(?: here)?|other name|other person's name|user|partner name)\]",
    re.IGNORECASE,
)
_ROUND_SLOT_RE = re.compile(
    r"\(((?:user|USER|User)[ _]?[12](?:'s)?(?:[ _]?(?:user)?name)?|name|Name|username|your name|insert name|"
    r"their name)\)"
)
_BARE_USER_RE = re.compile(r"(?<![\w/.\[(])@?[Uu][Ss][Ee][Rr] ?([12])\b")
PLACEHOLDER_RE = re.compile(
    r"[\[(](?!(?:or|a|an|the|especially)\b)(?:[\w']+ ){0,2}(?:names?|username)[\])]"  # (name), [band name]
    r"|[\[(][^\])]{0,40}\buser ?\d[^\])]{0,40}[\])]"  # (user 1 location), [User 2]
    r"|\buser ?[12]\b",  # bare "User 2"
    re.IGNORECASE,
)
"""Template slots that must never reach the model: `[user 1's name]`, `(name)`, `(User 2)`, bare `User 2`,
`[band name]` ... `load_corpus` drops any dialogue that still holds one; the tests and the evaluation of
sampled replies use the same pattern."""
_SELF_INTRO_RE = re.compile(r"(?:\bI'm|\bI am|\bname is|\bname's|\bcall me|\bthis is)\s*,?\s*$", re.IGNORECASE)
_ANY_BRACKET_RE = re.compile(r"\[[^\]]*\]")


def fill_name_placeholders(messages: Sequence[tuple[int, str]], key: str) -> list[tuple[int, str]] | None:
    """Replace persona-chat name placeholders by first names; None if other placeholders remain.

    The synthetic dialogues sometimes left template slots such as `[user 1's name]`, `[name]`, `(name)` or
    a bare `User 2` in the text. Name slots get a plausible first name, chosen from `FIRST_NAMES` by a hash
    of the dialogue (so
    the two speakers get different names and a rebuild picks the same ones). `[user 1 ...]` is the first
    speaker's name; a generic `[name]` is the speaker's own name right after "I'm"/"my name is", and the
    other speaker's name elsewhere ("nice to meet you, [name]"). Any other bracket slot (`[city]`,
    `[band name]`, stage directions) would need invented facts, so such dialogues are dropped.
    """
    h = stable_hash(key)
    first = h % len(FIRST_NAMES)
    second = (first + 1 + (h >> 16) % (len(FIRST_NAMES) - 1)) % len(FIRST_NAMES)
    names = (FIRST_NAMES[first], FIRST_NAMES[second])
    out: list[tuple[int, str]] = []
    for speaker, msg in messages:
        msg = _ROUND_SLOT_RE.sub(r"[\1]", msg)  # "(name)", "(User 1's name)": the same slots in round brackets
        msg = _BARE_USER_RE.sub(lambda m: names[int(m.group(1)) - 1], msg)  # "Bye, User 1"
        msg = _NUMBERED_NAME_RE.sub(lambda m: names[int(m.group(1)) - 1], msg)

        def generic(m: re.Match[str], speaker: int = speaker, msg: str = msg) -> str:
            other = m.group(1).lower().startswith(("their", "other", "insert their", "partner"))
            if not other and _SELF_INTRO_RE.search(msg[: m.start()]):
                return names[speaker]
            return names[1 - speaker]

        msg = _GENERIC_NAME_RE.sub(generic, msg)
        if _ANY_BRACKET_RE.search(msg):
            return None
        out.append((speaker, msg))
    return out


# ---------------------------------------------------------------------------------------------------------
# Per-source parsers


def parse_chat(
    text: str,
    source: str,
    *,
    labels: Sequence[str] = ("A", "B"),
    swap_per_10k: int = 0,
    fill_names: bool = False,
    skip_code: bool = False,
    max_chars: int = MAX_TURN_CHARS,
) -> tuple[list[Dialogue], Counter[str]]:
    """Parse a speaker-line file into dialogues; also count what was dropped and why.

    `swap_per_10k` of the dialogues (chosen by hash) start at the second speaker, who then plays the user.
    `fill_names` handles persona-chat placeholders; `skip_code` drops items with code blocks, which a
    400-character, whitespace-normalised turn cannot hold.
    """
    out: list[Dialogue] = []
    dropped: Counter[str] = Counter()
    for block in parse_speaker_blocks(text, labels):
        key = "\n".join(m for _, m in block)
        if skip_code and "```" in key:
            dropped["code"] += 1
            continue
        if fill_names:
            filled = fill_name_placeholders(block, key)
            if filled is None:
                dropped["placeholder"] += 1
                continue
            block = filled
        swap = swap_per_10k > 0 and stable_hash("swap:" + key) % 10_000 < swap_per_10k
        ds = messages_to_dialogues(block, source, skip_first=swap, max_chars=max_chars)
        if not ds:
            dropped["no complete turn"] += 1
        out += ds
    return out, dropped


@dataclass(frozen=True)
class Sense:
    """One WordNet synset as listed in the corpus (head lemma, part of speech, gloss, examples)."""

    lemma: str
    pos: str
    gloss: str
    examples: tuple[str, ...]


def parse_wordnet_line(line: str) -> Sense | None:
    """`lemma (pos): gloss; "ex 1"; "ex 2"` -> Sense. The gloss itself may contain `;`."""
    m = _WORDNET_RE.match(line.strip())
    if m is None:
        return None
    rest = m.group("rest")
    cut = rest.find('; "')
    gloss, tail = (rest, "") if cut < 0 else (rest[:cut], rest[cut + 2 :])
    examples = tuple(normalize(e) for e in re.findall(r'"([^"]+)"', tail))
    # WordNet quotes with `...' (TeX style); make that plain quotes.
    gloss = normalize(gloss.replace("`", "'")).rstrip(" ;.")
    if not gloss:
        return None
    return Sense(m.group("lemma"), m.group("pos"), gloss, examples)


def word_counts(dialogues: Iterable[Dialogue]) -> Counter[str]:
    """Lower-case word frequencies of the chat text: our proxy for how common an English word is."""
    counts: Counter[str] = Counter()
    for d in dialogues:
        for u, a in d.turns:
            counts.update(_WORD_RE.findall(u.lower()))
            counts.update(_WORD_RE.findall(a.lower()))
    return counts


class ContextStats:
    """Which words share a chat message with each candidate word: evidence for its everyday sense.

    WordNet as given lists a word's synsets in file order, which says nothing about which sense is common,
    and its sense counts are not part of the corpus. The chat text knows, though: messages that mention
    "coffee" also mention "cup" and "drink", not "shrubs". A sense whose gloss uses words that keep company
    with the word in chat is the sense people mean.
    """

    def __init__(self, dialogues: Iterable[Dialogue], targets: Iterable[str], per_target: int = 3_000) -> None:
        self.targets = set(targets)
        self.doc_freq: Counter[str] = Counter()  # messages containing each word
        self.with_target: dict[str, Counter[str]] = {w: Counter() for w in self.targets}
        self.target_msgs: Counter[str] = Counter()  # messages sampled per target (capped for speed)
        self.n_msgs = 0
        for d in dialogues:
            for turn in d.turns:
                for msg in turn:
                    words = set(_WORD_RE.findall(msg.lower()))
                    self.n_msgs += 1
                    self.doc_freq.update(words)
                    for w in words & self.targets:
                        if self.target_msgs[w] < per_target:
                            self.target_msgs[w] += 1
                            self.with_target[w].update(words)

    def relatedness(self, word: str, text: str, min_count: int = 3) -> float:
        """Positive pointwise mutual information of `word` with the content words of `text`, summed and
        scaled by 1/sqrt(len): long glosses are not rewarded for length, nor short ones for one rare word.
        Pairs seen fewer than `min_count` times are ignored as noise."""
        n_w = self.target_msgs[word]
        if n_w == 0:
            return 0.0
        gloss_words = {
            g for g in _WORD_RE.findall(text.lower())
            if g != word and g not in STOPWORDS and not g.startswith(word + "-")
        }  # fmt: skip
        if not gloss_words:
            return 0.0
        total = 0.0
        for g in gloss_words:
            c = self.with_target[word][g]
            if c >= min_count:
                total += max(0.0, math.log((c / n_w) / (self.doc_freq[g] / self.n_msgs)))
        return total / math.sqrt(len(gloss_words))


def _sense_score(sense: Sense, freq: Counter[str], context: ContextStats | None = None) -> float:
    """How likely a sense is the everyday one; used to pick which senses of a word to teach.

    The main signal is `ContextStats.relatedness`. Smaller nudges: a gloss written in frequent words reads
    as an everyday sense, a domain label like "(biology)" marks a specialist one, and senses with an
    example make better answers.
    """
    words = _WORD_RE.findall(sense.gloss.lower())
    familiarity = sum(min(math.log1p(freq[w]), 10.0) for w in words) / max(len(words), 1)
    score = 0.3 * familiarity + 0.3 * (1.0 if sense.examples else 0.0) - (2.0 if sense.gloss.startswith("(") else 0.0)
    if context is not None:
        score += context.relatedness(sense.lemma, " ".join((sense.gloss, *sense.examples)))
    return score


def _pick_senses(
    senses: Sequence[Sense], freq: Counter[str], k: int, context: ContextStats | None = None
) -> list[Sense]:
    """The `k` senses to teach for one word, the one to give first at the front.

    The first answer comes from the part of speech with the most synsets for this word: that is usually
    the word's main use ("great" is mostly an adjective, though WordNet also has the noun "a great").
    Within it, and for the follow-ups, senses are ranked by `_sense_score`.
    """
    ranked = sorted(senses, key=lambda s: -_sense_score(s, freq, context))
    per_pos = Counter(s.pos for s in senses)
    order = ("noun", "verb", "adjective", "adverb")
    main_pos = max(per_pos, key=lambda p: (per_pos[p], -order.index(p)))
    first = next(s for s in ranked if s.pos == main_pos)
    return [first, *(s for s in ranked if s is not first)][:k]


POS_ARTICLE = {"noun": "a noun", "verb": "a verb", "adjective": "an adjective", "adverb": "an adverb"}
_QUESTIONS = (
    "What does {w} mean?",
    "What is the meaning of {w}?",
    "Define {w}.",
    "What does the word {w} mean?",
    "what does {w} mean",
    "Can you tell me what {w} means?",
    "What's the definition of {w}?",
    "{w}? What does that mean?",
)
_FOLLOW_UPS = (
    "Does it have another meaning?",
    "What else can it mean?",
    "Any other meaning?",
    "Is there another sense of the word?",
)


_QUESTION_RES = tuple(re.compile(re.escape(q).replace(re.escape("{w}"), "([a-z-]+)")) for q in _QUESTIONS)
_FOLLOW_UP_RES = tuple(re.compile(re.escape(q)) for q in _FOLLOW_UPS)


def _answer(sense: Sense, variant: int, previous_pos: str | None, max_chars: int) -> str | None:
    """A fluent one- or two-sentence definition, with the first example if it fits in `max_chars`.

    `previous_pos` is the part of speech of the previous answer about the same word (None for the first
    answer): a follow-up in the same part of speech just says "It can also mean".
    """
    w, pos, gloss = sense.lemma, sense.pos, sense.gloss
    if previous_pos == pos:
        head = f"It can also mean: {gloss}."
    elif previous_pos is not None:
        head = f"It can also be {POS_ARTICLE[pos]}, meaning: {gloss}."
    elif variant % 2 == 0:
        # The word is written bare, as in the question, so it is the same token there and here. Restating
        # it matters: trained on answers that said "it" instead, the model recalled 19 % of the glosses
        # against 44 % with the word restated, the gloss being looked up from the word just before it.
        head = f"{w} ({pos}) means: {gloss}."
    else:
        head = f"As {POS_ARTICLE[pos]}, {w} means {gloss}."
    return with_example(head, sense.examples, max_chars)


def with_example(head: str, examples: Sequence[str], max_chars: int) -> str | None:
    """The answer with the sense's first example where it still fits, else the bare answer, else None."""
    for ex in examples[:1]:
        full = f'{head} For example: "{ex}".'
        if len(full) <= max_chars:
            return full
    return head if len(head) <= max_chars else None


def rephrase_definition(dialogue: Dialogue, variant: int) -> Dialogue:
    """The same definition dialogue with its questions asked in another of the phrasings.

    A definition seen many times in one phrasing is learnt as that exact string: the first built-in model
    recalled 91 % of its glosses when asked the way it was taught, and 45 % when asked "What does W mean?",
    which matched the taught phrasing for only one word in eight. Repeats that rotate through the phrasings
    teach the word -> gloss link itself. Answers are unchanged; turns that match no phrasing stay as they are.
    """
    turns: list[tuple[str, str]] = []
    for question, answer in dialogue.turns:
        for forms, templates in ((_QUESTION_RES, _QUESTIONS), (_FOLLOW_UP_RES, _FOLLOW_UPS)):
            hit = next(((i, m) for i, rx in enumerate(forms) if (m := rx.fullmatch(question))), None)
            if hit is not None:
                i, m = hit
                question = templates[(i + variant) % len(templates)].format(w=m[1] if m.groups() else "")
                break
        turns.append((question, answer))
    return Dialogue(turns, dialogue.source)


def wordnet_dialogues(
    text: str,
    chat: Sequence[Dialogue],
    *,
    cap: int = WORDNET_CAP,
    min_count: int = 2,
    max_senses: int = WORDNET_MAX_SENSES,
    max_chars: int = MAX_TURN_CHARS,
) -> list[Dialogue]:
    """WordNet glosses -> "What does X mean?" dialogues for common words.

    Only lower-case, single-word (optionally hyphenated) lemmas that are not closed-class words and occur
    at least `min_count` times in the chat corpus are used, most frequent first, until `cap` question/
    answer turns are made. Each word is one dialogue: the best-scoring sense answers the question, and up
    to `max_senses - 1` further senses answer follow-ups ("Does it have another meaning?"), which teaches
    multi-turn use of context ("it" = the word asked about).
    """
    by_lemma: dict[str, list[Sense]] = {}
    for line in text.split("\n"):
        sense = parse_wordnet_line(line)
        if sense is None or not _LEMMA_RE.fullmatch(sense.lemma) or sense.lemma in STOPWORDS:
            continue
        by_lemma.setdefault(sense.lemma, []).append(sense)
    freq = word_counts(chat)
    lemmas = sorted((w for w in by_lemma if freq[w] >= min_count), key=lambda w: (-freq[w], w))
    context = ContextStats(chat, lemmas[:cap])  # no more than `cap` words can be taught
    out: list[Dialogue] = []
    n_items = 0
    for w in lemmas:
        if n_items >= cap:
            break
        senses = _pick_senses(by_lemma[w], freq, min(max_senses, cap - n_items), context)
        h = stable_hash("wordnet:" + w)
        turns: list[tuple[str, str]] = []
        for k, sense in enumerate(senses):
            previous_pos = senses[k - 1].pos if k else None
            answer = _answer(sense, h >> 8, previous_pos=previous_pos, max_chars=max_chars)
            if answer is None:
                break
            if k == 0:
                question = _QUESTIONS[h % len(_QUESTIONS)].format(w=w)
            else:
                question = _FOLLOW_UPS[(h >> (4 + k)) % len(_FOLLOW_UPS)]
            turns.append((question, answer))
        if turns:
            out.append(Dialogue(turns, "wordnet"))
            n_items += len(turns)
    return out


# ---------------------------------------------------------------------------------------------------------
# The whole corpus


def load_corpus(
    data_dir: Path,
    *,
    max_turn_chars: int = MAX_TURN_CHARS,
    wordnet_cap: int = WORDNET_CAP,
    wordnet_min_count: int = 2,
    report: dict[str, Counter[str]] | None = None,
    sources: Iterable[str] | None = None,
) -> list[Dialogue]:
    """Read every known source file present in `data_dir` into de-duplicated dialogues.

    `sources` limits the reading to some keys of `SOURCE_FILES` (v6 builds its WordNet turns elsewhere).

    Missing files are skipped (tests use a subset); no file at all is an error. Exact duplicate
    dialogues (the chatterbot and coffee files repeat some) are kept once, so the held-out split cannot
    hold a copy of a training dialogue. If `report` is given, it receives per-source counters of what
    was dropped.
    """
    data_dir = Path(data_dir)
    wanted = set(SOURCE_FILES if sources is None else sources)
    found = {n: data_dir / fn for n, fn in SOURCE_FILES.items() if n in wanted and (data_dir / fn).is_file()}
    if not found:
        raise FileNotFoundError(f"no corpus files ({', '.join(SOURCE_FILES.values())}) in {data_dir}")
    dialogues: list[Dialogue] = []
    drops: dict[str, Counter[str]] = {}
    chat_opts: dict[str, dict[str, Any]] = {
        "persona": {"swap_per_10k": 2500, "fill_names": True},
        "chitchat": {"swap_per_10k": 2500},
        "chatterbot": {"skip_code": True},
        "coffee": {"labels": ("User", "Assistant")},
    }
    for name, opts in chat_opts.items():
        if name in found:
            ds, dropped = parse_chat(read_xz(found[name]), name, max_chars=max_turn_chars, **opts)
            dialogues += ds
            drops[name] = dropped
    if "wordnet" in found:
        dialogues += wordnet_dialogues(
            read_xz(found["wordnet"]), dialogues, cap=wordnet_cap, min_count=wordnet_min_count,
            max_chars=max_turn_chars,
        )  # fmt: skip
    seen: set[str] = set()
    unique: list[Dialogue] = []
    for d in dialogues:
        t = d.text()
        if PLACEHOLDER_RE.search(t):
            drops.setdefault(d.source, Counter())["placeholder"] += 1
            continue
        if t in seen:
            drops.setdefault(d.source, Counter())["duplicate"] += 1
            continue
        seen.add(t)
        unique.append(d)
    if report is not None:
        report.update(drops)
    return unique


def is_heldout(dialogue: Dialogue, per_10k: int = HELDOUT_PER_10K) -> bool:
    """Held-out membership from a hash of the text: stable across runs, machines and corpus order."""
    return stable_hash("split:" + dialogue.text()) % 10_000 < per_10k


def split(dialogues: Sequence[Dialogue], per_10k: int = HELDOUT_PER_10K) -> tuple[list[Dialogue], list[Dialogue]]:
    """(train, heldout): about `per_10k`/10,000 of the dialogues are held out, chosen by `is_heldout`."""
    train: list[Dialogue] = []
    heldout: list[Dialogue] = []
    for d in dialogues:
        (heldout if is_heldout(d, per_10k) else train).append(d)
    return train, heldout


def summarize(dialogues: Sequence[Dialogue]) -> dict[str, dict[str, int]]:
    """Per-source counts: dialogues, turns and characters (plus a "total" row)."""
    rows: dict[str, dict[str, int]] = {}
    for d in dialogues:
        for key in (d.source, "total"):
            r = rows.setdefault(key, {"dialogues": 0, "turns": 0, "chars": 0})
            r["dialogues"] += 1
            r["turns"] += len(d.turns)
            r["chars"] += d.n_chars()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print a per-source summary of the corpus (and, with --show N, some sample dialogues)."""
    p = argparse.ArgumentParser(prog="python -m mixchat.train.corpus", description=__doc__.split("\n")[0])
    p.add_argument("data_dir", type=Path, help="folder holding the *.txt.xz corpus files")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N sample dialogues per source")
    args = p.parse_args(argv)
    try:
        drops: dict[str, Counter[str]] = {}
        dialogues = load_corpus(args.data_dir, report=drops)
    except (OSError, lzma.LZMAError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    train, heldout = split(dialogues)
    print(f"{'source':<12}{'dialogues':>11}{'turns':>10}{'chars':>13}  dropped")
    for name, r in summarize(dialogues).items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(drops.get(name, Counter()).items()))
        print(f"{name:<12}{r['dialogues']:>11,}{r['turns']:>10,}{r['chars']:>13,}  {dropped}")
    print(f"split: {len(train):,} train / {len(heldout):,} held-out dialogues")
    if args.show:
        for name in SOURCE_FILES:
            picked = [d for d in dialogues if d.source == name][: args.show]
            for d in picked:
                print(f"\n--- {name}")
                for u, a in d.turns:
                    print(f"USER: {u}\nBOT:  {a}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
