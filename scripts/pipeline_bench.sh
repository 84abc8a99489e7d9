#!/usr/bin/env bash
# Pipeline-parallel check on a machine with two GPUs (written for 2 x H200): Mixtral 8x7B's shape with
# random bf16 weights, one GPU against two pipeline stages. About five minutes.
#
#   scripts/pipeline_bench.sh [OUT_DIR]        (needs: mixchat importable, torch with CUDA, 2 GPUs)
#
# Runs, each a fresh process (`--json` results land in OUT_DIR, default ./pipeline-bench):
#   one-b1, one-b8             one GPU (CUDA_VISIBLE_DEVICES=0), batch 1 and 8
#   pp-b1, pp-b8               torchrun --nproc-per-node 2, no micro-batching
#   pp-b8-m2, pp-b8-m4         batch 8 in 2 / 4 micro-batches (decode steps interleaved across stages)
#   pp-b16-m2                  two micro-batches of 8 each (each stage busy with a batch-8 micro-batch)
# and prints decode tokens/s, the ratios the issue asks for, and the peak memory of every GPU.
set -uo pipefail
ONLY=${ONLY:-}  # e.g. ONLY="one-b1 pp-b1": run just these (on a tight GPU budget)

OUT=${1:-pipeline-bench}
PY=${PYTHON:-python}
mkdir -p "$OUT"
COMMON=(bench --shape mixtral-8x7b --device cuda --dtype bfloat16 --prompt-tokens 128 --new-tokens 48
        --repeats 2 --json)
TORCHRUN=("$PY" -m torch.distributed.run --nproc-per-node 2)

run() {  # name, command...
    local name=$1; shift
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    echo "== $name: $*" >&2
    local start=$SECONDS
    "$@" > "$OUT/$name.json.tmp" 2> "$OUT/$name.err" && mv "$OUT/$name.json.tmp" "$OUT/$name.json"
    echo "   exit $?, $((SECONDS - start)) s" >&2
}

run one-b1 env CUDA_VISIBLE_DEVICES=0 "$PY" -m mixchat "${COMMON[@]}" --batch 1
run one-b8 env CUDA_VISIBLE_DEVICES=0 "$PY" -m mixchat "${COMMON[@]}" --batch 8
run pp-b1 "${TORCHRUN[@]}" -m mixchat "${COMMON[@]}" --batch 1
run pp-b8 "${TORCHRUN[@]}" -m mixchat "${COMMON[@]}" --batch 8
run pp-b8-m2 "${TORCHRUN[@]}" -m mixchat "${COMMON[@]}" --batch 8 --micro-batches 2
run pp-b8-m4 "${TORCHRUN[@]}" -m mixchat "${COMMON[@]}" --batch 8 --micro-batches 4
run pp-b16-m2 "${TORCHRUN[@]}" -m mixchat "${COMMON[@]}" --batch 16 --micro-batches 2

"$PY" - "$OUT" <<'PYEOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
r = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
gib = 2**30


def tps(name):
    return r[name]["decode_tokens_per_s"]["median"]


print(f"{'run':<11} {'batch':>5} {'micro':>5} {'decode tok/s':>12} {'ttft ms':>8}  peak memory per GPU (GiB)")
for name, x in r.items():
    pp = x.get("pipeline")
    mem = pp["peak_memory_bytes_per_rank"] if pp else [x["peak_memory_bytes"]]
    print(f"{name:<11} {x['batch']:>5} {pp['micro_batches'] if pp else 1:>5} {tps(name):>12.1f} "
          f"{x['ttft_s']['median'] * 1000:>8.1f}  " + ", ".join(f"{m / gib:.1f}" for m in mem))

try:
    one_mem = r["one-b1"]["peak_memory_bytes"]
    pp_mem = r["pp-b1"]["pipeline"]["peak_memory_bytes_per_rank"]
    print()
    print(f"memory per GPU, two stages / one GPU: {', '.join(f'{m / one_mem:.2f}' for m in pp_mem)}  (target ~0.5)")
    print(f"decode batch 1, two stages / one GPU: {tps('pp-b1') / tps('one-b1'):.2f}  (target >= 0.85)")
except KeyError as e:
    print(f"(no batch-1 comparison: run {e} missing)")
for name in ("pp-b8", "pp-b8-m2", "pp-b8-m4", "pp-b16-m2"):
    if name in r and "one-b8" in r:
        print(f"decode {name}, tokens/s over one GPU's batch 8: {tps(name) / tps('one-b8'):.2f}  (target >= 1.5 "
              "with micro-batching)")
PYEOF
