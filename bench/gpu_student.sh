#!/usr/bin/env bash
# The student's GPU checks in one script, for an H100/H200 (python with torch and numpy, plus the wheels of
# pydantic, optuna and their needs, carried in .whl/: see bench/README.md):
#   1. bench/bench_batched.py: aggregate training beats/s of K = 1, 4, 8, 16 students batched in one process
#      against K sequential runs (goal: >= 4x one member's throughput at K = 8);
#   2. bench/verdict.py on DATASET: teacher (fold 0) -> a small Optuna search of the student -> the best config
#      over SEEDS next to its no-KD/no-contrastive control -> paired record-level comparisons.
# Usage: bash bench/gpu_student.sh DATASET OUT    (env: SKIP_BENCH=1, TEACHER_EPOCHS, TRIALS, GROUP, TUNE_EPOCHS,
#        FINAL_EPOCHS, SEEDS, STUDENT_BEATS, FOLD, BENCH_TIMEOUT, VERDICT_TIMEOUT); one fold a call: FOLD=1 SKIP_BENCH=1 ...
# Results in OUT: gpu.txt, batched_gpu.json, batched.log, verdict.json, verdict.log (the run's folders in $WORK).
set -uo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:?dataset folder}
OUT=${2:?output folder}
WORK=${WORK:-/tmp/gpu_student}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch, pydantic, optuna; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA", "pydantic", pydantic.VERSION, "optuna", optuna.__version__)' | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/gpu.txt" 2>&1 || true
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout "${BENCH_TIMEOUT:-90}" "$PY" bench/bench_batched.py --device cuda --steps 40 --repeats 2 --members 1,4,8,16 \
    --json "$OUT/batched_gpu.json" > "$OUT/batched.log" 2>&1
  echo "bench_batched exit $?" | tee -a "$OUT/batched.log"
fi
timeout "${VERDICT_TIMEOUT:-300}" "$PY" bench/verdict.py "$DATASET" "$WORK/verdict" --device cuda --fold "${FOLD:-0}" \
  --teacher-epochs "${TEACHER_EPOCHS:-20}" --trials "${TRIALS:-8}" --group-size "${GROUP:-8}" \
  --tune-epochs "${TUNE_EPOCHS:-6}" --final-epochs "${FINAL_EPOCHS:-8}" --seeds "${SEEDS:-0,1,2}" \
  --student-max-train-beats "${STUDENT_BEATS:-16384}" > "$OUT/verdict.log" 2>&1
echo "verdict exit $?" | tee -a "$OUT/verdict.log"
cp "$WORK/verdict/verdict.json" "$OUT/" 2>/dev/null || echo "no verdict.json (see verdict.log)"
tail -n 40 "$OUT/verdict.log"
