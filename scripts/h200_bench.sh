#!/usr/bin/env bash
# Issue 6 figures on one H200: Mixtral 8x7B's shape, random bf16 weights, against transformers in the same
# process. Writes OUT_DIR/{b1,b8,prefill4096}.json and prints the lines the note quotes. About 3 minutes.
#   scripts/h200_bench.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-h200-bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
COMMON=(-m mixchat bench --shape mixtral-8x7b --device cuda --dtype bfloat16 --compare transformers --json)
run() {  # name, extra options...
    local name=$1; shift
    local start=$SECONDS
    "$PY" "${COMMON[@]}" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
    echo "== $name ($*): exit $?, $((SECONDS - start)) s" >&2
    grep -E '"(median|decode_speed_ratio|ttft_speedup_ratio|decode_fraction_of_bound|cuda_graphs|peak_memory_bytes|first_decode_step_s)"' \
        "$OUT/$name.json" | tr -s ' ' | tr '\n' ' ' >&2; echo >&2
}
run b1 --batch 1 --prompt-tokens 128 --new-tokens 48 --repeats 2
run b8 --batch 8 --prompt-tokens 128 --new-tokens 32 --repeats 2
# One pre-fill pass for the whole prompt: the right chunk size on a GPU (512, the default, suits CPUs).
run prefill4096 --batch 1 --prompt-tokens 4096 --new-tokens 2 --repeats 2 --chunk-size 4096
