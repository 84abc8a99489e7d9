#!/usr/bin/env bash
# Join the parts made by scripts/pack_builtin_run.sh and unpack them into RUN_DIR (moe/, dense/, dataset/).
# Usage: scripts/unpack_builtin_run.sh PARTS_DIR RUN_DIR
set -euo pipefail
PARTS=$1; RUN=$2
mkdir -p "$RUN"
cat "$PARTS"/run.tar.part* | tar -C "$RUN" -xf -
ls -l "$RUN" "$RUN/moe/model"
