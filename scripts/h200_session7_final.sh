#!/usr/bin/env bash
# The session's last H200 run for issue 18: bf16, int8 and int4 decode side by side (batch 1 and 8), pre-fill
# of 4,096 tokens, the fast-path checks, and a second batch-1 round for the spread.
#   scripts/h200_session7_final.sh OUT_DIR
set -uo pipefail
OUT=$1
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
step() {
    local cap=$1 name=$2; shift 2
    local start=$SECONDS
    timeout "$cap" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    echo "== $name: exit $?, $((SECONDS - start)) s" >> "$OUT/summary.txt"
}
bench() {
    local name=$1; shift
    step 75 "$name" "$PY" -m mixchat bench --shape mixtral-8x7b --device cuda --dtype bfloat16 --json "$@"
    "$PY" - "$OUT/$name.out" "$name" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "(no result:", e, ")"); raise SystemExit
d = r["decode_tokens_per_s"]
print(f"{sys.argv[2]:14s} {r.get('quant', 'none'):9s} b{r['batch']}: decode {d['median']:.1f} tok/s "
      f"(min {d['min']:.1f}, max {d['max']:.1f}), pre-fill {r['prefill_tokens_per_s']:,.0f} tok/s, "
      f"peak {r['peak_memory_bytes']/2**30:.2f} GiB, bound {r.get('decode_fraction_of_bound', 0)*100:.0f}%")
PY
}
B1=(--batch 1 --prompt-tokens 128 --new-tokens 64 --repeats 3)
B8=(--batch 8 --prompt-tokens 128 --new-tokens 32 --repeats 3)
P4K=(--batch 1 --prompt-tokens 4096 --new-tokens 2 --repeats 3 --chunk-size 4096)
bench b1-bf16 "${B1[@]}"
bench b1-int8 --quant int8 "${B1[@]}"
bench b1-int4 --quant int4 "${B1[@]}"
bench b8-bf16 "${B8[@]}"
bench b8-int8 --quant int8 "${B8[@]}"
bench b8-int4 --quant int4 "${B8[@]}"
bench prefill-bf16 "${P4K[@]}"
bench prefill-int8 --quant int8 "${P4K[@]}"
bench prefill-int4 --quant int4 "${P4K[@]}"
for q in none int8 int4; do
    args=(); [ "$q" = none ] || args=(--quant "$q")
    step 90 "check-$q" "$PY" scripts/check_gpu_fast_path.py --seed 11 "${args[@]}"
    echo "check-$q: $(tail -1 "$OUT/check-$q.out")" | tee -a "$OUT/summary.txt"
done
bench b1-bf16-2 "${B1[@]}"
bench b1-int8-2 --quant int8 "${B1[@]}"
bench b1-int4-2 --quant int4 "${B1[@]}"
bench b8-int8-2 --quant int8 "${B8[@]}"
# Decode attention without cuDNN's SDPA kernel (8.7 us a layer in the profiles): the same runs, A/B
NOCUDNN='import sys, torch; torch.backends.cuda.enable_cudnn_sdp(False)
from mixchat.cli.main import main
sys.exit(main(sys.argv[1:]))'
PY_SAVED=$PY
for name in b1-int8 b8-int8; do
    shape=("${B1[@]}"); [ "$name" = b8-int8 ] && shape=("${B8[@]}")
    timeout 75 "$PY_SAVED" -c "$NOCUDNN" bench --shape mixtral-8x7b --device cuda --dtype bfloat16 --json --quant int8 \
        "${shape[@]}" > "$OUT/$name-nocudnn.out" 2> "$OUT/$name-nocudnn.err"
    "$PY_SAVED" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'no cuDNN SDPA:', round(r['decode_tokens_per_s']['median'],1), 'tok/s')" "$OUT/$name-nocudnn.out" "$name" | tee -a "$OUT/summary.txt"
done
