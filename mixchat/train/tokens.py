"""Encode dialogues in Mistral's v3 chat layout with a loss mask, pack them, and save training sets.

The model is trained on exactly the token layout the app feeds it at chat time (Mistral v3, the same
ids mistral-common produces):

    <s>[INST]▁user 1[/INST]▁reply 1</s>[INST]▁user 2[/INST]▁reply 2</s>

The loss covers the reply tokens and the `</s>` that ends each reply, and nothing else: the model must
learn to answer and to stop, not to imitate users.

The packed sets are written as safetensors (never pickle), with tokens as int16 when the vocabulary fits
and the loss mask as bits, so a training machine needs neither sentencepiece nor this corpus code, and
the files are small enough to upload: see `load_packed`.

Run ``python -m mixchat.train.tokens DATA_DIR OUT_DIR`` to build the built-in model's dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mixchat.train.corpus import Dialogue
from mixchat.train.mix import build_mix
from mixchat.train.spm import BOS_ID, EOS_ID, INST_END_ID, INST_ID, load_processor, train_tokenizer

PACKED_FORMAT = "mixchat-packed-v1"

Encoder = spm.SentencePieceProcessor | Callable[[str], list[int]]
"""A SentencePiece processor, or any function text -> ids that adds the dummy-prefix space like one."""


def _encode_texts(sp: Encoder, texts: list[str]) -> list[list[int]]:
    """Encode several texts; a SentencePiece processor does them in one (batched, C++) call."""
    if isinstance(sp, spm.SentencePieceProcessor):
        return sp.encode(texts)
    return [list(sp(t)) for t in texts]


def encode_dialogue_v3(sp: Encoder, dialogue: Dialogue | Sequence[tuple[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of a whole dialogue in the v3 layout, and the loss mask (True = learn this token).

    `ids[i]` is trained as a target iff `mask[i]`: reply tokens and the `</s>` after each reply. `<s>`,
    `[INST]`, the user's tokens and `[/INST]` are context only.
    """
    turns = dialogue.turns if isinstance(dialogue, Dialogue) else dialogue
    encoded = _encode_texts(sp, [text for turn in turns for text in turn])
    ids: list[int] = [BOS_ID]
    mask: list[bool] = [False]
    for k in range(len(turns)):
        user, reply = encoded[2 * k], encoded[2 * k + 1]
        prompt = [INST_ID, *user, INST_END_ID]
        ids += prompt
        mask += [False] * len(prompt)
        ids += [*reply, EOS_ID]
        mask += [True] * (len(reply) + 1)
    return ids, mask


def pack_examples(
    examples: Iterable[tuple[Sequence[int], Sequence[bool]]], seq_len: int, pad_id: int = EOS_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack encoded dialogues into rows of `seq_len + 1` tokens: (tokens int32 [R, L+1], mask bool [R, L+1]).

    The dialogues are concatenated into one stream (each starts with `<s>`, which marks the boundary for
    a trainer that wants document-aware attention) and cut into windows of L+1 tokens with stride L, so
    consecutive rows share one token: the model is fed `tokens[:, :-1]` and predicts `tokens[:, 1:]`
    with loss weight `mask[:, 1:]`, and every token of the stream is a target exactly once, none lost at
    row edges. The last row is padded with `pad_id` under a False mask. No padding elsewhere: nothing
    is wasted, and a dialogue longer than a row simply continues in the next one.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    stream: list[int] = []
    stream_mask: list[bool] = []
    for ids, mask in examples:
        if len(ids) != len(mask):
            raise ValueError(f"ids and mask differ in length ({len(ids)} != {len(mask)})")
        stream += ids
        stream_mask += mask
    n = len(stream)
    rows = max(1, -(-(n - 1) // seq_len))  # ceil((n - 1) / L): windows needed to cover all n tokens
    total = rows * seq_len + 1
    tok = torch.full((total,), pad_id, dtype=torch.int32)
    msk = torch.zeros(total, dtype=torch.bool)
    tok[:n] = torch.tensor(stream, dtype=torch.int32)
    msk[:n] = torch.tensor(stream_mask, dtype=torch.bool)
    return tok.unfold(0, seq_len + 1, seq_len).contiguous(), msk.unfold(0, seq_len + 1, seq_len).contiguous()


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [..., n] -> uint8 [..., ceil(n / 8)], first element in the most significant bit (numpy's
    `packbits` order). An 8x smaller loss mask keeps the upload small."""
    n = mask.shape[-1]
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, -n % 8))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (padded.unflatten(-1, (-1, 8)) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: uint8 [..., ceil(n / 8)] -> bool [..., n]."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    return ((bits.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :n].bool()


def save_packed(path: Path, tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int, **meta: Any) -> int:
    """Write packed rows as safetensors: `tokens` (int16 if the vocabulary fits, else int32) and
    `mask_bits` (see `pack_bits`). Returns the file size in bytes.

    int16 rather than uint16: uint16 is a late, partly supported torch dtype, while int16 holds every id
    below 32768 and converts to int64 in one op on any device. The metadata is one JSON string under the
    key "mixchat" (sorted keys): safetensors writes its metadata map in hash order, so several keys
    would make two builds of the same data differ byte-wise.
    """
    dtype = torch.int16 if vocab_size <= 2**15 else torch.int32
    if tokens.numel() and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} outside the vocabulary ({vocab_size})")
    info = {
        "format": PACKED_FORMAT,
        "vocab_size": vocab_size,
        "row_len": tokens.shape[1],
        "mask": "mask_bits: loss mask of tokens, 8 per byte, first token in the high bit",
        **meta,
    }
    tensors = {"tokens": tokens.to(dtype).contiguous(), "mask_bits": pack_bits(mask)}
    save_file(tensors, str(path), {"mixchat": json.dumps(info, sort_keys=True)})
    return Path(path).stat().st_size


def packed_info(path: Path) -> dict[str, Any]:
    """The metadata `save_packed` stored (format, vocab_size, row_len, split, ...)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        info = json.loads(meta["mixchat"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: not a mixchat packed dataset (no 'mixchat' metadata)") from None
    if info.get("format") != PACKED_FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r}, expected {PACKED_FORMAT!r}")
    return info


def load_packed(path: Path, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Load a packed set: (tokens int64 [R, L+1], loss mask bool [R, L+1]).

    Only needs torch and safetensors. Train on inputs `tokens[:, :-1]`, targets `tokens[:, 1:]`, loss
    weights `mask[:, 1:]`.
    """
    packed_info(path)  # refuses files of another format before reading any tensor
    data = load_file(str(path), device=str(device))
    tokens = data["tokens"].long()
    return tokens, unpack_bits(data["mask_bits"], tokens.shape[1])


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_dataset(
    data_dir: Path,
    out_dir: Path,
    vocab_size: int = 8192,
    seq_len: int = 512,
    seed: int = 0,
    *,
    wordnet_index: Path | None = None,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Corpus -> tokenizer + packed train / held-out sets + statistics, all in `out_dir`.

    Writes `tokenizer.model`, `train.safetensors`, `heldout.safetensors`, `stats.json` and
    `taught_words.json` (the words whose definitions are taught, commonest first), and returns the
    statistics. The dialogues come from `mix.build_mix` (repeats included; `scale` shrinks them for
    CPU checks). The tokenizer is trained on the distinct train dialogues only, so repeats do not skew its
    pieces towards definitions. Dialogue order is shuffled with `seed` before packing so that sources
    interleave within rows; everything else is hash-based, so a rebuild from the same corpus gives
    identical files.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drops: dict[str, Counter[str]] = {}
    mix = build_mix(Path(data_dir), wordnet_index, scale=scale, drops=drops)
    train, heldout = mix.train, mix.heldout
    t_corpus = time.perf_counter() - t0
    distinct = list({d.text(): d for d in train}.values())
    model_path = train_tokenizer(distinct, out_dir / "tokenizer", vocab_size=vocab_size, seed=seed)
    sp = load_processor(model_path)
    t_tokenizer = time.perf_counter() - t0 - t_corpus

    stats: dict[str, Any] = {
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "row_len": seq_len + 1,
        "seed": seed,
        "mix_scale": scale,
        "mix": mix.stats,
        "taught_words": len(mix.taught_words),
        "tokenizer": {"file": model_path.name, "sha256": _sha256(model_path), "model_type": "bpe"},
        "splits": {},
        "sources": {},
        "dropped": {k: dict(v) for k, v in sorted(drops.items()) if v},
    }
    for name, dialogues in (("train", train), ("heldout", heldout)):
        order = list(dialogues)
        random.Random(f"{seed}:{name}").shuffle(order)
        examples = [encode_dialogue_v3(sp, d) for d in order]
        per_source: dict[str, Counter[str]] = {}
        for d, (ids, loss_mask) in zip(order, examples, strict=True):
            c = per_source.setdefault(d.source, Counter())
            c["dialogues"] += 1
            c["turns"] += len(d.turns)
            c["chars"] += d.n_chars()
            c["tokens"] += len(ids)
            c["loss_tokens"] += sum(loss_mask)
            c["special_tokens"] += 1 + 3 * len(d.turns)  # <s>, then [INST] [/INST] </s> per turn
        tokens, mask = pack_examples(examples, seq_len)
        path = out_dir / f"{name}.safetensors"
        size = save_packed(path, tokens, mask, vocab_size, split=name, seq_len=seq_len)
        total = Counter[str]()
        for c in per_source.values():
            total.update(c)
        text_tokens = total["tokens"] - total["special_tokens"]
        stats["splits"][name] = {
            **{k: total[k] for k in ("dialogues", "turns", "chars", "tokens", "loss_tokens")},
            "rows": tokens.shape[0],
            "chars_per_token": round(total["chars"] / max(text_tokens, 1), 4),
            "file": path.name,
            "file_bytes": size,
            "sha256": _sha256(path),
        }
        stats["sources"][name] = {
            src: {k: c[k] for k in ("dialogues", "turns", "chars", "tokens", "loss_tokens")}
            for src, c in sorted(per_source.items())
        }
    stats["seconds"] = {
        "corpus": round(t_corpus, 1),
        "tokenizer": round(t_tokenizer, 1),
        "total": round(time.perf_counter() - t0, 1),
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    # Which words the data defines, commonest first: the evaluation picks taught words from it.
    (out_dir / "taught_words.json").write_text(json.dumps(mix.taught_words) + "\n")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build the dataset and print its statistics."""
    p = argparse.ArgumentParser(prog="python -m mixchat.train.tokens", description="Build the built-in "
                                "model's tokenizer and packed training data.")  # fmt: skip
    p.add_argument("data_dir", type=Path, help="folder holding the *.txt.xz corpus files")
    p.add_argument("out_dir", type=Path, help="output folder (keep it out of git, e.g. .data/builtin)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wordnet-index", type=Path, help="WordNet index files (default: DATA_DIR/wordnet, .data/wordnet)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every repeat count (small for CPU checks)")
    args = p.parse_args(argv)
    try:
        stats = build_dataset(
            args.data_dir,
            args.out_dir,
            args.vocab_size,
            args.seq_len,
            args.seed,
            wordnet_index=args.wordnet_index,
            scale=args.scale,
        )
    except (OSError, ValueError, RuntimeError, lzma.LZMAError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
