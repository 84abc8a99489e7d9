#!/usr/bin/env bash
# Rebuild the built-in model in one command: tokenizer and token sets from the corpus, then the MoE model and
# its dense twin side by side on one GPU (same steps, same data), then the MoE model's second pass.
# Usage: scripts/train_builtin_gpu.sh CORPUS_OR_DATASET_DIR OUT_DIR [STEPS]
# The shipped model is OUT_DIR/final/model. Given a dataset folder (one with stats.json), the first stage is
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
# Second pass for the shipped model: half of every batch from the definition turns (seconds on a GPU,
# about 15 minutes on a 2-core CPU with --device cpu).
python3 -m mixchat train --dataset "$DATA" --out "$OUT/final" --init "$OUT/moe/model" --definitions \
    --steps 400 --batch-size 8 --lr 5e-4 --eval-every 100 > "$OUT/final.log" 2>&1
tail -n 12 "$OUT/moe.log" "$OUT/dense.log" "$OUT/final.log"
