"""The judges of `scripts/builtin_eval.py`: right answers pass, wrong ones fail, so its percentages mean
what the card says they mean (a judge that passed everything, or nothing, would make the figures empty)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("builtin_eval", ROOT / "scripts" / "builtin_eval.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["builtin_eval"] = mod
    spec.loader.exec_module(mod)
    return mod


RIVER = ["a large natural stream of water (larger than a creek)"]
BORROW = ["get temporarily", "take up and practice as one's own"]


def test_definition_judge(ev: ModuleType) -> None:
    assert ev.is_right("river (noun) means: a large natural stream of water.", RIVER)
    assert ev.is_right("A river is a big natural stream, larger than a creek.", RIVER)
    assert not ev.is_right("river (noun) means: the act of fishing with a rod.", RIVER)
    assert not ev.is_right("Water!", RIVER)  # one word of six is not a definition
    assert ev.is_right("To borrow is to get something temporarily.", BORROW)
    assert not ev.is_right("borrow means to get.", BORROW)


def test_second_question_judge(ev: ModuleType) -> None:
    coffee = ["a beverage consisting of an infusion of ground coffee beans"]
    assert ev.is_about_second("river (noun) means: a large natural stream of water.", "coffee", coffee, "river", RIVER)
    assert not ev.is_about_second("coffee can also mean: a beverage of ground beans.", "coffee", coffee, "river", RIVER)
    assert not ev.is_about_second("I don't know.", "coffee", coffee, "river", RIVER)


def test_identity_and_unknown_judges(ev: ModuleType) -> None:
    assert ev.is_true_identity("I'm the built-in model of mixchat: a small chat model. I'm not a person.")
    assert not ev.is_true_identity("I'm a teacher from Ohio and I love hiking.")
    assert not ev.is_true_identity("My name is Sarah, I'm a small model.")
    assert ev.says_unknown("I don't know the capital of Moldova. It isn't in my training data.", "Chișinău")
    assert not ev.says_unknown("The capital of Moldova is Chisinau.", "Chișinău")
    assert not ev.says_unknown("I don't know, but the capital of Moldova is Tiraspol.", "Chișinău")
    assert not ev.says_unknown("Chisinau, I think.", "Chișinău")


def test_heldout_lists_in_docs_and_card_match_the_code(ev: ModuleType) -> None:
    """docs/builtin/heldout.md is what `--write-lists` writes from `mixchat.train.heldout`, and the card
    names every held-out word: the lists people read are the ones training excludes."""
    from mixchat.train.heldout import HELDOUT_WORDS

    assert (ROOT / "docs" / "builtin" / "heldout.md").read_text() == ev.heldout_lists()
    card = (ROOT / "mixchat" / "builtin" / "MODEL_CARD.md").read_text()
    assert all(f" {w}," in card or f" {w};" in card for w in HELDOUT_WORDS)
