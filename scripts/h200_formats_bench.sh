#!/usr/bin/env bash
# Issue 12 and 18 figures on one H200, in one run: Mixtral 8x7B's shape with random weights in bf16, int8
# and int4 side by side (batch 1 and 8 decode, a 4,096-token pre-fill), after the fast-path checks against
# float32 (bf16 and both quantized formats). Each step is capped so one slow step cannot eat the rest.
#   scripts/h200_formats_bench.sh [OUT_DIR]        (about 8 minutes)
# Writes OUT_DIR/<name>.json per bench, OUT_DIR/checks.log, and prints a summary line per bench.
set -uo pipefail
OUT=${1:-h200-formats}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
step() {  # seconds, name, command...
    local cap=$1 name=$2; shift 2
    local start=$SECONDS
    timeout "$cap" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    echo "== $name: exit $?, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
bench() {  # name, cap, options...
    local name=$1 cap=$2; shift 2
    step "$cap" "$name" "$PY" -m mixchat bench --shape mixtral-8x7b --device cuda --json "$@"
    "$PY" - "$OUT/$name.out" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("   (no result:", e, ")"); raise SystemExit
d = r["decode_tokens_per_s"]["median"]
print(f"   {r.get('quant')} batch {r['batch']}: decode {d:.1f} tok/s, pre-fill {r['prefill_tokens_per_s']:,.0f} tok/s, "
      f"ttft {r['ttft_s']['median']*1000:.1f} ms, peak {r['peak_memory_bytes']/2**30:.1f} GiB, "
      f"bound {r.get('decode_fraction_of_bound', 0)*100:.0f}%, graphs {r.get('cuda_graphs')}")
PY
}
check() {  # format
    local args=(); [ "$1" = none ] || args=(--quant "$1")
    step 120 "check-$1" "$PY" scripts/check_gpu_fast_path.py --seed 7 "${args[@]}"
    { echo "== check $1"; tail -n 14 "$OUT/check-$1.out"; tail -n 3 "$OUT/check-$1.err"; } >> "$OUT/checks.log"
}
fmt() {  # format -> bench options
    if [ "$1" = bfloat16 ]; then echo --dtype bfloat16; else echo --dtype bfloat16 --quant "$1"; fi
}
check none
for q in bfloat16 int8 int4; do
    bench "b1-$q" 90 $(fmt $q) --batch 1 --prompt-tokens 128 --new-tokens 64 --repeats 3
done
for q in bfloat16 int8 int4; do
    bench "b8-$q" 90 $(fmt $q) --batch 8 --prompt-tokens 128 --new-tokens 32 --repeats 3
done
for q in bfloat16 int8 int4; do  # one pre-fill pass for the whole prompt (the chunk size a GPU wants)
    bench "prefill-$q" 90 $(fmt $q) --batch 1 --prompt-tokens 4096 --new-tokens 2 --repeats 3 --chunk-size 4096
done
check int8
check int4
