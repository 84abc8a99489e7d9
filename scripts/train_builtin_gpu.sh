#!/usr/bin/env bash
# Train the built-in MoE model and its dense twin side by side on one GPU, with the same number of steps.
# Usage: scripts/train_builtin_gpu.sh DATASET_DIR OUT_DIR [TRAIN_SECONDS]
# A short probe run measures the step time of both, then both train for the steps that fit TRAIN_SECONDS.
set -euo pipefail
DATA=$1; OUT=$2; BUDGET=${3:-420}
mkdir -p "$OUT"
probe() {
  python3 -m mixchat train --dataset "$DATA" --out "$OUT/probe-$1" $2 --steps 30 --eval-every 30 --eval-batches 1 \
    > "$OUT/probe-$1.log" 2>&1
}
probe moe "" & probe dense "--dense" & wait
step_time() { python3 -c "import json,sys; s=json.load(open('$OUT/probe-$1/summary.json')); print(s['seconds']/s['steps'])"; }
T_MOE=$(step_time moe); T_DENSE=$(step_time dense)
STEPS=$(python3 -c "print(int($BUDGET / max($T_MOE, $T_DENSE)))")
echo "probe: moe ${T_MOE}s/step, dense ${T_DENSE}s/step (concurrent) -> $STEPS steps each" | tee "$OUT/plan.txt"
python3 -m mixchat train --dataset "$DATA" --out "$OUT/moe" --steps "$STEPS" > "$OUT/moe.log" 2>&1 &
python3 -m mixchat train --dataset "$DATA" --out "$OUT/dense" --dense --steps "$STEPS" > "$OUT/dense.log" 2>&1 &
wait
tail -n 5 "$OUT/moe.log" "$OUT/dense.log"
