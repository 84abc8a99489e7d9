#!/usr/bin/env bash
# Fourth H200 run: kernel-time profiles of the decode step (bf16, int8, int4 at batch 1; int8 at batch 8), and
# int8 batch-1 decode with the dot tile for the big matrices (new) against the GEMV tile everywhere (old: the
# previous commit's one-row settings, patched in), alternating.
#   scripts/h200_session7_profile.sh OUT_DIR
set -uo pipefail
OUT=$1
PY=${PYTHON:-python3}
ROOT=$PWD
mkdir -p "$OUT"
prof() { local name=$1; shift; timeout 90 env PYTHONPATH=$ROOT:$PYTHONPATH "$PY" scripts/profile_gpu_step.py "$@" > "$OUT/$name.txt" 2>&1; head -14 "$OUT/$name.txt"; }
B1=(--batch 1 --prompt-tokens 128 --new-tokens 64 --repeats 3)
OLDCFG='
import sys, mixchat.exec.quant_triton as q
new = q.stream_config
def old(rows, n, k, int4):
    if rows == 1 and not int4:
        bn, sub = (16, 4) if n >= 8192 else (8, 16)
        return {"BLOCK_M": 1, "BLOCK_N": bn, "SUB": sub, "SPLIT": 1, "CVT": 1, "num_warps": 4, "num_stages": 3}
    return new(rows, n, k, int4)
q.stream_config = old
from mixchat.cli.main import main
sys.exit(main(sys.argv[1:]))'
bench() { local tree=$1 name=$2; shift 2; local run=(-m mixchat); [ "$tree" = old ] && run=(-c "$OLDCFG")
    timeout 75 env PYTHONPATH=$ROOT:$PYTHONPATH "$PY" "${run[@]}" bench --shape mixtral-8x7b --device cuda --json "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], r.get('quant'), 'b', r['batch'], round(r['decode_tokens_per_s']['median'],1), 'tok/s')" "$OUT/$name.out" $name; }
bench new b1-int8-new-1 --dtype bfloat16 --quant int8 "${B1[@]}"
bench old b1-int8-old-1 --dtype bfloat16 --quant int8 "${B1[@]}"
bench new b1-int8-new-2 --dtype bfloat16 --quant int8 "${B1[@]}"
bench old b1-int8-old-2 --dtype bfloat16 --quant int8 "${B1[@]}"
prof prof-int8-b1 --quant int8
prof prof-int4-b1 --quant int4
prof prof-int8-b8 --quant int8 --batch 8
prof prof-bf16-b1
