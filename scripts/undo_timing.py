"""Time undoing one turn from the undo log against rebuilding the conversation by pre-fill.

On the built-in model (window 256, or --model DIR), holds a greedy conversation past --tokens (default
1100, more than 4x the window, so the rolling buffer has wrapped several times), saves it, then measures in
this one run:

  undo:          steer.undo of the last turn: the slots it overwrote are copied back from the undo log
  rebuild:       pre-fill of the remaining ids into an empty cache (what going back costs without the log)
  resumed undo:  the conversation loaded from disk (cache and undo log), then undo of its last turn

and checks that all three give the same next-token logits as one fresh pre-fill of the remaining ids.

usage: python scripts/undo_timing.py [--tokens 1100] [--model DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mixchat.model.layout import fresh_layout
from mixchat.runtime import load_runtime
from mixchat.session import ChatSettings, Conversation, ConversationStore, steer

TEXT = (
    "the river carries old stones past the quiet mill while children count boats and the miller writes "
    "letters about weather markets bridges lanterns and a long winter that nobody expected"
)
WORDS = TEXT.split(" ")


def paragraph(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n_words))


@torch.inference_mode()
def fresh_logits(conv: Conversation) -> torch.Tensor:
    """One cache-free pass over all of the conversation's ids: the reference."""
    model = conv.model
    layout = fresh_layout([len(conv.ids)], model.args.sliding_window, "cpu")
    return model(torch.tensor(conv.ids), layout, last_only=True)[0]


def diff(conv: Conversation) -> float:
    return (conv.next_token_logits() - fresh_logits(conv)).abs().max().item()


def build(rt: Any, tokens: int) -> Conversation:
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=48), name="undo timing")
    i = 0
    while len(conv.ids) < tokens:
        for _ in conv.send(paragraph(i, 40)):
            pass
        i += 1
    return conv


def timed_undo(conv: Conversation) -> tuple[float, steer.Undone]:
    t0 = time.perf_counter()
    undone = steer.undo(conv)
    return time.perf_counter() - t0, undone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1100, help="conversation length to reach (default 1100)")
    p.add_argument("--model", help="model folder (default: the built-in model)")
    p.add_argument("--repeats", type=int, default=5, help="conversations timed (median reported)")
    a = p.parse_args()

    rt = load_runtime(a.model, device="cpu", dtype="float32")
    window = rt.model.args.sliding_window
    undo_s, rebuild_s, resumed_s, diffs = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = ConversationStore(Path(tmp) / "data")
        for r in range(a.repeats):
            conv = build(rt, a.tokens)
            conv.name = f"undo timing {r}"
            length, wraps = len(conv.ids), conv.cache.wraps(0)
            store.save(conv)

            t_undo, undone = timed_undo(conv)
            assert undone.exact, "the undo did not come from the log"
            diffs.append(diff(conv))
            undo_s.append(t_undo)

            rebuilt = Conversation(rt.engine, rt.tokenizer, conv.fingerprint, conv.settings, ids=conv.ids)
            t0 = time.perf_counter()
            for _ in rebuilt.prefill_pending():
                pass
            rebuild_s.append(time.perf_counter() - t0)
            diffs.append(diff(rebuilt))

            resumed = store.load_for(rt, conv.name).conversation
            assert len(resumed.undo_log) > 0, "the undo log was not saved"
            t_resumed, undone = timed_undo(resumed)
            assert undone.exact and resumed.ids == conv.ids
            resumed_s.append(t_resumed)
            diffs.append(diff(resumed))

    def ms(xs: list[float]) -> str:
        return f"{1000 * statistics.median(xs):.2f} ms (median of {len(xs)})"

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"model: {rt.name}, window {window}, float32")
    print(
        f"conversation: {length} tokens ({length / (window or length):.1f}x the window, buffer wrapped {wraps} times)"
    )
    print(f"undo one turn from the undo log:       {ms(undo_s)}")
    print(f"rebuild by pre-fill ({len(conv.ids) - 1} tokens):      {ms(rebuild_s)}")
    print(f"undo after save and resume (from disk): {ms(resumed_s)}")
    ratio = statistics.median(undo_s) / statistics.median(rebuild_s)
    print(f"undo takes {100 * ratio:.2f}% of the rebuild; max logit difference from a fresh pre-fill {max(diffs):.2e}")


if __name__ == "__main__":
    main()
