#!/usr/bin/env bash
# The paper-scale protocol (bench/paper.py) one chunk per device call, on an H100/H200: python with torch and numpy,
# plus the wheels of pydantic and optuna carried in .whl/ (bench/README.md), and the preprocessed MIT-BIH beats in
# .device-data/beats (57 MiB; `sibeatgan preprocess --source ../shared/data/mitdb --out .device-data/beats`).
# It runs the next units not yet in bench/results/paper (that folder travels with the working tree), as many as
# BUDGET_S allows, and writes them into OUT/paper (this call's log and card: OUT/run.log, OUT/gpu.txt); the session
# then copies OUT/paper/* into bench/results/paper, runs
#   python bench/paper.py summarize .device-data/beats       (here, no GPU needed)
# and commits bench/results/paper with the figures written into bench/student.md.
# Usage (device call, timeout 560 s):  bash bench/gpu_paper.sh OUT      env: BUDGET_S (default 470), PAPER_ARGS
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?output folder}
PY=${PYTHON:-python3}
mkdir -p "$OUT/paper"
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
gpu_env "$OUT" pydantic optuna
# shellcheck disable=SC2086
"$PY" bench/paper.py run .device-data/beats --results bench/results/paper --out "$OUT/paper" --device cuda \
  --budget-s "${BUDGET_S:-470}" ${PAPER_ARGS:-} 2>&1 | tee "$OUT/run.log" | grep -v " epoch " | tail -n 40
rc=${PIPESTATUS[0]}
echo "paper.py exit $rc"
exit "$rc"
