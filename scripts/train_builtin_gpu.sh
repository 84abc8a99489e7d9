#!/usr/bin/env bash
# Rebuild the built-in model in one command: the v6 dataset (tokenizer and token sets) from the corpus, then
# the MoE model and its dense twin side by side on one GPU, for the same steps on the same data.
#
# Usage: scripts/train_builtin_gpu.sh CORPUS_OR_DATASET_DIR OUT_DIR [STEPS]
#   env TIME_BUDGET=SECONDS  cut the MoE run to the steps that fit (timed on its steps 10-30); the dense twin
#                            then trains exactly as many steps (it reads OUT/moe/steps.json)
#   env WORDNET_INDEX=DIR    WordNet's index files (default CORPUS/wordnet, then .data/wordnet; get them
#                            with scripts/fetch_wordnet_index.sh)
#   env PRESET=NAME          model shape (default builtin; see mixchat.train.loop.PRESETS)
#   env TRAIN_ARGS="..."     more `mixchat train` options for both runs (a CPU check: "--batch-size 4")
#   env PYTHON=...           the interpreter (default python3)
# The shipped model is OUT_DIR/moe/model. Given a dataset folder (one with stats.json), the first stage is
# skipped. The dataset build refuses to go on without WordNet's sense order (stats.json must say
# "wordnet-index"), since file order gives rare senses first.
set -euo pipefail
SRC=$1; OUT=$2; STEPS=${3:-2000}
PRESET=${PRESET:-builtin}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -f "$SRC/stats.json" ]; then
    DATA=$SRC
    [ "$(realpath "$SRC")" = "$(realpath -m "$OUT/dataset")" ] || ln -sfn "$(realpath "$SRC")" "$OUT/dataset"
else
    DATA=$OUT/dataset
    $PY -m mixchat.train.tokens "$SRC" "$DATA" ${WORDNET_INDEX:+--wordnet-index "$WORDNET_INDEX"} \
        > "$OUT/dataset.log" 2>&1 || { tail -n 20 "$OUT/dataset.log"; exit 1; }
fi
ORDER=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["mix"].get("wordnet",{}).get("sense_order"))' \
        "$DATA/stats.json")
if [ "$ORDER" != "wordnet-index" ]; then
    echo "error: $DATA was built without WordNet's index files (sense order: $ORDER); run scripts/fetch_wordnet_index.sh" >&2
    exit 1
fi
$PY -c 'import json,sys; s=json.load(open(sys.argv[1]))["splits"]; print("dataset:", {k: v["tokens"] for k, v in s.items()}, "tokens")' \
    "$DATA/stats.json"
$PY -m mixchat train --dataset "$DATA" --out "$OUT/moe" --preset "$PRESET" --steps "$STEPS" \
    ${TIME_BUDGET:+--time-budget "$TIME_BUDGET"} ${TRAIN_ARGS:-} > "$OUT/moe.log" 2>&1 &
MOE=$!
DENSE_STEPS=$STEPS
if [ -n "${TIME_BUDGET:-}" ]; then
    while [ ! -f "$OUT/moe/steps.json" ]; do
        kill -0 $MOE 2>/dev/null || { tail -n 20 "$OUT/moe.log"; exit 1; }
        sleep 2
    done
    DENSE_STEPS=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"])' "$OUT/moe/steps.json")
fi
$PY -m mixchat train --dataset "$DATA" --out "$OUT/dense" --preset "$PRESET" --dense --steps "$DENSE_STEPS" \
    ${TRAIN_ARGS:-} > "$OUT/dense.log" 2>&1 &
DENSE=$!
wait $MOE; wait $DENSE
tail -n 12 "$OUT/moe.log" "$OUT/dense.log"
