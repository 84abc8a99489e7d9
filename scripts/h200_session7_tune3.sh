#!/usr/bin/env bash
# Third H200 run: decode with run 2's tiles as defaults, and the 16-row dot tile tried at batch 1.
#   scripts/h200_session7_tune3.sh OUT_DIR
set -uo pipefail
OUT=$1
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
B1=(--batch 1 --prompt-tokens 128 --new-tokens 64 --repeats 3)
B8=(--batch 8 --prompt-tokens 128 --new-tokens 32 --repeats 3)
bench() { local name=$1; shift; timeout 75 "$PY" -m mixchat bench --shape mixtral-8x7b --device cuda --json "$@" > "$OUT/$name.out" 2> "$OUT/$name.err";
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], r.get('quant'), 'b', r['batch'], round(r['decode_tokens_per_s']['median'],1), 'tok/s, bound', round(100*r.get('decode_fraction_of_bound',0)), '%')" "$OUT/$name.out" $name | tee -a "$OUT/summary.txt"; }
bench b1-int8 --dtype bfloat16 --quant int8 "${B1[@]}"
bench b1-int4 --dtype bfloat16 --quant int4 "${B1[@]}"
bench b8-int8 --dtype bfloat16 --quant int8 "${B8[@]}"
bench b8-int4 --dtype bfloat16 --quant int4 "${B8[@]}"
timeout 150 "$PY" scripts/tune_quant_gemv.py --cases b1 --no-dequant --block-m 16 --cvts 0,1 \
    --tiles 32:4:4:4,64:4:4:4,128:2:8:4 > "$OUT/dot-b1.txt" 2>&1
cat "$OUT/dot-b1.txt" >> "$OUT/summary.txt"
