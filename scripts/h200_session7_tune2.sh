#!/usr/bin/env bash
# Second H200 run: wider tile grids around run 1's best one-row settings, and the 16-row tiles of batch 8.
#   scripts/h200_session7_tune2.sh OUT_DIR
set -uo pipefail
OUT=$1
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
T=scripts/tune_quant_gemv.py
timeout 150 "$PY" $T --cases b1 --no-dequant --formats int4 --cvts 2 \
    --tiles 16:8:4:3,16:16:4:3,32:2:4:3,32:4:4:3,32:8:4:3,64:2:4:3,64:4:4:3,32:4:8:3,64:4:8:3 > "$OUT/int4-b1.txt" 2>&1
timeout 150 "$PY" $T --cases b1 --no-dequant --formats int8 --cvts 1,2 \
    --tiles 8:8:4:3,8:16:4:3,16:8:4:3,16:16:4:3,32:8:4:3,16:4:2:3,16:8:8:3,32:4:8:3 > "$OUT/int8-b1.txt" 2>&1
timeout 200 "$PY" $T --cases b8 --no-dequant --formats int8 > "$OUT/int8-b8.txt" 2>&1
cat "$OUT"/*.txt
