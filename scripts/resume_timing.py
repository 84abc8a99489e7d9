"""Time resuming a saved conversation against rebuilding its cache by pre-fill.

Builds a random Mixtral checkpoint (default: W=4096, dim 512, 8 layers, 8 experts, mistral-common's v1
tokenizer), holds a conversation of about 3000 tokens on it, saves it, then measures

  resume:  fingerprint the model files + read the transcript + check and restore the saved cache
  rebuild: pre-fill the transcript's token ids into an empty cache (what a resume without a cache costs)

and checks that both give the same next-token logits. Prints the figures; nothing is written outside a
temporary folder unless --model-dir is given (then the checkpoint is kept there and reused).

usage: python scripts/resume_timing.py [--tokens 3000] [--window 4096] [--dim 512] [--layers 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mixchat.loader import random_model, save_native
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.runtime import load_runtime
from mixchat.session import ChatSettings, Conversation, ConversationStore
from mixchat.session import fingerprint as fingerprint_module

TEXT = (
    "the river carries old stones past the quiet mill while children count boats and the miller writes "
    "letters about weather markets bridges lanterns and a long winter that nobody expected"
)
WORDS = TEXT.split(" ")


def tokenizer_file() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def build(folder: Path, a: argparse.Namespace) -> None:
    if (folder / "params.json").is_file():
        return
    args = ModelArgs(
        dim=a.dim,
        n_layers=a.layers,
        head_dim=a.dim // 8,
        hidden_dim=a.hidden,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=32000,
        sliding_window=a.window,
        moe=MoeArgs(8, 2),
    )
    save_native(random_model(args, seed=0, std=0.02), folder)
    shutil.copy(tokenizer_file(), folder / "tokenizer.model.v1")


def paragraph(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n_words))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=3000, help="conversation length to reach (default 3000)")
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--model-dir", type=Path, help="keep (and reuse) the random checkpoint here")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = a.model_dir or Path(tmp) / "model"
        build(folder, a)
        rt = load_runtime(folder, device="cpu", dtype="float32")
        settings = ChatSettings(temperature=0.0, max_tokens=24, chunk_size=a.chunk_size)
        conv = Conversation.from_runtime(rt, settings, name="timing")
        i = 0
        while len(conv.ids) < a.tokens:
            for _ in conv.send(paragraph(i, min(600, max(10, (a.tokens - len(conv.ids)) // 2)))):
                pass
            i += 1
        store = ConversationStore(Path(tmp) / "data")
        t0 = time.perf_counter()
        folder_saved = store.save(conv)
        t_save = time.perf_counter() - t0
        cache_bytes = sum(f.stat().st_size for f in folder_saved.glob("cache-*.safetensors"))

        fingerprint_module._file_cache.clear()  # count the weights hash, as a fresh process would
        t0 = time.perf_counter()
        loaded = store.load_for(rt, "timing")
        t_resume = time.perf_counter() - t0
        assert loaded.problem is None, loaded.problem
        resumed = loaded.conversation
        logits_resumed = resumed.next_token_logits()

        rebuilt = store.load_for(rt, "timing").conversation
        rebuilt.invalidate_cache()
        t0 = time.perf_counter()
        for _ in rebuilt.prefill_pending():
            pass
        t_rebuild = time.perf_counter() - t0
        diff = (rebuilt.next_token_logits() - logits_resumed).abs().max().item()

        params = sum(p.numel() for p in rt.model.parameters())
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(
            f"model: random Mixtral, {params / 1e6:.0f}M parameters, dim {a.dim}, {a.layers} layers, 8 experts "
            f"(top-2), window {a.window}, float32"
        )
        print(
            f"conversation: {conv.turns} turns, {len(conv.ids)} tokens; cache file {cache_bytes / 2**20:.1f} MiB "
            f"(saved in {t_save:.3f} s)"
        )
        print(f"resume (fingerprint + transcript + checks + restore): {t_resume:.3f} s")
        print(f"rebuild by pre-fill ({len(rebuilt.ids) - 1} tokens, chunks of {a.chunk_size}): {t_rebuild:.3f} s")
        print(f"resume is {t_rebuild / t_resume:.0f}x faster; next-token logits differ by {diff:.2e}")


if __name__ == "__main__":
    main()
