#!/usr/bin/env bash
# Rebuild the built-in model in one command: tokenizer and token sets from the corpus, then the MoE model and
# its dense twin side by side on one GPU, for the same steps on the same data.
# Usage: scripts/train_builtin_gpu.sh CORPUS_OR_DATASET_DIR OUT_DIR [STEPS]
# The shipped model is OUT_DIR/moe/model. Given a dataset folder (one with stats.json), the first stage is
# skipped. On one H200 the MoE run takes about 0.15 s per step of 64 x 512 tokens.
set -euo pipefail
SRC=$1; OUT=$2; STEPS=${3:-2000}
mkdir -p "$OUT"
if [ -f "$SRC/stats.json" ]; then
    DATA=$SRC
else
    DATA=$OUT/dataset
    python3 -m mixchat.train.tokens "$SRC" "$DATA" > "$OUT/dataset.log" 2>&1
fi
python3 -m mixchat train --dataset "$DATA" --out "$OUT/moe" --steps "$STEPS" > "$OUT/moe.log" 2>&1 &
python3 -m mixchat train --dataset "$DATA" --out "$OUT/dense" --dense --steps "$STEPS" > "$OUT/dense.log" 2>&1 &
wait
tail -n 12 "$OUT/moe.log" "$OUT/dense.log"
