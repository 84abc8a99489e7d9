#!/usr/bin/env bash
# Pack a finished scripts/train_builtin_gpu.sh run for the trip back from a GPU machine: the MoE model folder,
# both training logs and summaries, what the evaluation needs of the dataset (stats, held-out set, taught
# words, tokenizer; not the 45 MB train set) and the run logs, as one tar cut into parts of
# at most 15 MiB (the device tool returns at most 8 files of 16 MiB each).
# Usage: scripts/pack_builtin_run.sh OUT_DIR DEST_DIR      then, here: scripts/unpack_builtin_run.sh DEST_DIR RUN_DIR
set -euo pipefail
OUT=$1; DEST=$2
mkdir -p "$DEST"
tar -C "$OUT" -chf - moe/model moe/train_log.csv moe/summary.json dense/train_log.csv dense/summary.json \
    dataset/stats.json dataset/heldout.safetensors dataset/taught_words.json dataset/tokenizer.model \
    moe.log dense.log $( [ -f "$OUT/moe/steps.json" ] && echo moe/steps.json ) \
    | split -b 15M -d - "$DEST/run.tar.part"
ls -l "$DEST"
