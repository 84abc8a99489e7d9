#!/usr/bin/env bash
# The last H200 run of a session: the GPU checks and figures the open issues ask for, most important first,
# each step capped so one slow step cannot eat the rest (EXTRAS=1 adds the stage graphs and the tile tune).
# OLD_TREE (default .old) holds the mixchat package of the commit before the execution seam (4887052), for
# bf16 decode alternating old/new in one session.
#   scripts/h200_final.sh OUT_DIR
set -uo pipefail
OUT=$1
PY=${PYTHON:-python3}
OLD=${OLD_TREE:-.old}
ROOT=$PWD
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
step() {  # seconds, name, command... (output in OUT/name.out and .err; one summary line)
    local cap=$1 name=$2; shift 2
    local start=$SECONDS
    timeout "$cap" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    echo "== $name: exit $?, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
report() {  # name: one line from a bench JSON
    "$PY" - "$OUT/$1.out" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("   (no result:", e, ")"); raise SystemExit
d = r["decode_tokens_per_s"]["median"]
print(f"   {r.get('quant', 'none')} batch {r['batch']}: decode {d:.1f} tok/s {r['decode_tokens_per_s']}, "
      f"pre-fill {r['prefill_tokens_per_s']:,.0f} tok/s, ttft {r['ttft_s']['median']*1000:.1f} ms, "
      f"peak {r['peak_memory_bytes']/2**30:.2f} GiB, bound {r.get('decode_fraction_of_bound', 0)*100:.0f}%, "
      f"graphs {r.get('cuda_graphs')}")
PY
}
bench() {  # tree (new|old), name, options...
    local tree=$1 name=$2; shift 2
    local dir=$ROOT; [ "$tree" = old ] && dir=$ROOT/$OLD
    (cd "$dir" && PYTHONPATH=$dir${PYTHONPATH#$ROOT} step 75 "$name" "$PY" -m mixchat bench --shape mixtral-8x7b \
        --device cuda --json "$@")
    report "$name"
}
B1=(--batch 1 --prompt-tokens 128 --new-tokens 64 --repeats 3)
B8=(--batch 8 --prompt-tokens 128 --new-tokens 32 --repeats 3)
P4K=(--batch 1 --prompt-tokens 4096 --new-tokens 2 --repeats 3 --chunk-size 4096)
# 1. bf16 decode on the new code (issue 12), one old round beside it
bench new b1-new-1 --dtype bfloat16 "${B1[@]}"
bench old b1-old-1 --dtype bfloat16 "${B1[@]}"
bench new b8-new --dtype bfloat16 "${B8[@]}"
# 2. fast paths against float32 (bf16: the captured reference forward; int8/int4: the quantized kernels)
for q in none int8 int4; do
    args=(); [ "$q" = none ] || args=(--quant "$q")
    step 90 "check-$q" "$PY" scripts/check_gpu_fast_path.py --seed 7 "${args[@]}"
    tail -1 "$OUT/check-$q.out" | tee -a "$OUT/summary.txt"
done
# 3. quantized decode and pre-fill beside bf16 (issue 18)
for q in int8 int4; do
    bench new "b1-$q" --dtype bfloat16 --quant "$q" "${B1[@]}"
    bench new "b8-$q" --dtype bfloat16 --quant "$q" "${B8[@]}"
done
bench new prefill-bf16 --dtype bfloat16 "${P4K[@]}"
bench new prefill-int8 --dtype bfloat16 --quant int8 "${P4K[@]}"
bench new prefill-int4 --dtype bfloat16 --quant int4 "${P4K[@]}"
bench new b1-new-2 --dtype bfloat16 "${B1[@]}"
bench old b1-old-2 --dtype bfloat16 "${B1[@]}"
# 4. the optional extras: stage graphs replayed on subsets of rows (issue 16), the quantized kernel's tiles
if [ -n "${EXTRAS:-}" ]; then
    step 70 stage-graphs "$PY" scripts/check_stage_graphs.py
    step 120 tune-quant "$PY" scripts/tune_quant_gemv.py
fi
