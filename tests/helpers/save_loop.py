"""Save one conversation over and over, with a big cache, printing each save's number once it is complete.

test_session_store.test_sigkill_during_save_leaves_a_complete_save runs this as a real process and kills
it with SIGKILL at random moments; what is on disk must then load without a problem and be one of the
complete saves. Save n is recognisable: its cache is filled with n (K) and -n (V), its user message says
"save n", and its length depends on n. Its ids are those of its messages (a reply of one repeated token),
so the transcript passes the check that ids and messages agree.

usage: python save_loop.py DATA_DIR
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's mixchat, not an installed one

from session_support import tokenizer_v1

from mixchat.chat_template import encode_turn
from mixchat.engine import Engine
from mixchat.loader import random_model
from mixchat.model.args import ModelArgs
from mixchat.session import ChatSettings, Conversation, ConversationStore, Loaded, fingerprint_model
from mixchat.session.conversation import ChatMessage
from mixchat.tokenizer import SentencePieceTokenizer as Tokenizer

NAME = "crash test"
WINDOW = 32768  # 2 layers x 32768 x 2 heads x 16 x fp32, K and V: a 16 MiB cache file once full


def _setup() -> tuple[Engine, Tokenizer, object]:
    args = ModelArgs(
        dim=32, n_layers=2, head_dim=16, hidden_dim=32, n_heads=2, n_kv_heads=2, vocab_size=32000, sliding_window=WINDOW
    )
    model = random_model(args, seed=3)
    return Engine(model, None), Tokenizer(tokenizer_v1()), fingerprint_model(model, args)


def seen_for(n: int) -> int:
    return WINDOW // 2 + (n * 7919) % WINDOW  # between W/2 and 1.5 W: some saves have wrapped


def ids_for(tok: Tokenizer, n: int) -> tuple[list[int], list[int]]:
    """(ids of the user turn "save n", the reply's ids): seen_for(n) + 1 ids in all."""
    turn = encode_turn(tok, f"save {n}", first=True)
    return turn, [100 + n % 1000] * (seen_for(n) + 1 - len(turn))


def fill(conv: Conversation, n: int) -> None:
    conv.cache._ensure_slots(WINDOW)  # the buffer as a forward over that many tokens would have grown it
    conv.cache.k[:, 0].fill_(float(n))
    conv.cache.v[:, 0].fill_(-float(n))
    conv.cache.seen[0] = seen_for(n)
    turn, reply = ids_for(conv.tokenizer, n)
    conv.ids = turn + reply
    conv.messages = [
        ChatMessage("user", f"save {n}"),
        ChatMessage("assistant", conv.tokenizer.decode(reply), "length", len(reply)),
    ]
    conv.dirty = True


def save_number(conv: Conversation) -> int:
    return int(conv.messages[0].content.split()[1])


def check(conv: Conversation, n: int) -> None:
    """Everything of save n, and nothing of another save."""
    assert conv.cache.seen[0] == seen_for(n), (conv.cache.seen[0], n)
    turn, reply = ids_for(conv.tokenizer, n)
    assert conv.ids == turn + reply
    assert conv.messages[0].content == f"save {n}" and conv.messages[1].tokens == len(reply)
    snap = conv.cache.snapshot(0)
    assert snap.k.shape[1] == min(seen_for(n), WINDOW)
    assert bool((snap.k == n).all()) and bool((snap.v == -n).all())


def load(data: Path) -> Loaded:
    engine, tok, fp = _setup()
    return ConversationStore(data).load(NAME, engine, tok, fp)  # type: ignore[arg-type]


def main() -> None:
    data = Path(sys.argv[1])
    engine, tok, fp = _setup()
    store = ConversationStore(data)
    if store.exists(NAME):
        conv = store.load(NAME, engine, tok, fp).conversation  # type: ignore[arg-type]
        start = save_number(conv) + 1
    else:
        conv = Conversation(engine, tok, fp, ChatSettings(), name=NAME)  # type: ignore[arg-type]
        start = 1
    for n in itertools.count(start):
        fill(conv, n)
        store.save(conv)
        print(n, flush=True)


if __name__ == "__main__":
    main()
