"""The built-in model's evaluation sets, fixed before training (v6) and kept out of the training data.

Each list was chosen once by the rule in its docstring and then written down here, so that the choice
cannot drift with the data or the results: `tokens.build_dataset` excludes them, tests check that the built
dataset does not contain them, and `scripts/builtin_report.py` measures the trained model on them. The card
(`mixchat/builtin/MODEL_CARD.md`) and `docs/builtin/heldout.md` list them.
"""

from __future__ import annotations

ISSUE_WORDS: tuple[str, ...] = (
    "river", "bread", "winter", "window", "borrow", "gentle", "kitchen", "cloud", "bridge", "forest", "library",
)  # fmt: skip
"""The eleven words issue 15 names as never answered right by v5."""

HASHED_WORDS: tuple[str, ...] = (
    "musician", "develop", "stand", "beauty", "answer", "intelligence", "flower", "state", "financial", "cool",
    "weight", "seem", "recommendation", "send", "next", "science", "raise", "follow", "rice", "salt", "star",
    "incredible", "field", "water", "secret", "fruit", "historical", "rest", "collect", "wait", "orange",
    "officer", "save", "look", "control", "drama", "high", "roll", "moment",
)  # fmt: skip
"""39 more, by rule: single words seen at least 150 times in the chat sources whose most frequent WordNet
sense is a noun, verb or adjective tagged at least 5 times, at least 4 letters, not ending in -s/-ed/-ing/-ly,
no proper noun among their first three senses, "number" not in the first gloss, not a card word (happy,
friend, coffee, music); taken in the order of `stable_hash("heldout-word:" + word)`."""

HELDOUT_WORDS: tuple[str, ...] = ISSUE_WORDS + HASHED_WORDS
"""50 common words whose definitions are not taught: no dialogue asks what they mean, and none of their
synsets' glosses or examples is taught under any other word (a synonym's definition would teach the very
gloss the check compares with). They still occur in chat and inside other words' glosses: the test is
whether the model has learnt a meaning from that."""

CAPITAL_COUNTRIES: tuple[tuple[str, str], ...] = (
    ("Iran", "Tehran"), ("Japan", "Tokyo"), ("Mali", "Bamako"), ("Morocco", "Rabat"),
    ("the Faroe Islands", "Tórshavn"), ("Lesotho", "Maseru"), ("Lithuania", "Vilnius"), ("Botswana", "Gaborone"),
    ("Malaysia", "Kuala Lumpur"), ("French Guiana", "Cayenne"), ("Ghana", "Accra"), ("the Bahamas", "Nassau"),
    ("Saint Barthélemy", "Gustavia"), ("Peru", "Lima"), ("the British Virgin Islands", "Road Town"),
    ("Madagascar", "Antananarivo"), ("Bermuda", "Hamilton"), ("Switzerland", "Bern"), ("East Timor", "Dili"),
    ("Andorra", "Andorra la Vella"),
)  # fmt: skip
"""20 countries and territories whose capitals ARE in the data (the check is recall): those whose capital is
the same in country_facts and quiz_facts, in the order of `stable_hash("capital-eval:" + name)`."""

UNKNOWN_COUNTRIES: tuple[tuple[str, str], ...] = (
    ("Burundi", "Bujumbura"), ("Réunion", "Saint-Denis"), ("Saint Kitts and Nevis", "Basseterre"),
    ("Moldova", "Chișinău"), ("Senegal", "Dakar"),
)  # fmt: skip
"""Five countries taken OUT of the data: every fact dialogue and WordNet entry that names the country or its
capital is dropped. Rule: the next countries in the same hash order whose name and capital never occur in
the chat sources and whose capital does not contain the country's name (so a guess like "Panama City" cannot
pass for knowledge). Asked for their capital, the model should say it does not know."""

IDENTITY_PROMPTS: tuple[str, ...] = (
    "Who are you?",
    "What exactly are you?",
    "Are you a person or a computer program?",
    "Tell me what you are.",
)
""""Who are you?" (taught) and three rephrasings that no training turn uses."""

SECOND_QUESTION_PAIRS = 20
"""Conversations of two definition questions (taught words) in the evaluation of the second answer."""
