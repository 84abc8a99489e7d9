#!/usr/bin/env bash
# One H200 run: the one-row quantized kernel's tiles with the lean conversion (CVT 2), then batch-1 decode
# through the fused step over quantized weights against the module path, and the fast-path checks.
#   scripts/h200_session7_tune.sh OUT_DIR
set -uo pipefail
OUT=$1
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
step() {
    local cap=$1 name=$2; shift 2
    local start=$SECONDS
    timeout "$cap" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    echo "== $name: exit $?, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
B1=(--batch 1 --prompt-tokens 128 --new-tokens 64 --repeats 3)
B8=(--batch 8 --prompt-tokens 128 --new-tokens 32 --repeats 3)
bench() { local name=$1; shift; step 75 "$name" "$PY" -m mixchat bench --shape mixtral-8x7b --device cuda --json "$@";
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('  ', r.get('quant'), 'b', r['batch'], round(r['decode_tokens_per_s']['median'],1), 'tok/s, bound', round(100*r.get('decode_fraction_of_bound',0)), '%')" "$OUT/$name.out" | tee -a "$OUT/summary.txt"; }
bench b1-int8-fused --dtype bfloat16 --quant int8 "${B1[@]}"
bench b1-int4-fused --dtype bfloat16 --quant int4 "${B1[@]}"
MIXCHAT_FUSED=0 bench b1-int8-modules --dtype bfloat16 --quant int8 "${B1[@]}"
bench b8-int8-fused --dtype bfloat16 --quant int8 "${B8[@]}"
for q in int8 int4; do
    step 90 "check-$q" "$PY" scripts/check_gpu_fast_path.py --seed 7 --quant "$q"
    tail -2 "$OUT/check-$q.out" | tee -a "$OUT/summary.txt"
done
step 300 tune-b1 "$PY" scripts/tune_quant_gemv.py --cases b1 --no-dequant --formats int4,int8 --json "$OUT/tune-b1.json"
cat "$OUT/tune-b1.out" >> "$OUT/summary.txt"
