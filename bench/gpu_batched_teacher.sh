#!/usr/bin/env bash
# Pending GPU check 1 (bench/README.md): how much faster K teachers of different (fold, seed) train as one batched
# group (sibeatgan.train.batched_teacher) than one at a time, on an H100/H200. Needs python with torch and numpy, plus
# the pydantic wheels carried in .whl/ (bench/README.md); the real-data part also needs the preprocessed MIT-BIH beats
# in .device-data/beats (`sibeatgan preprocess --source ../shared/data/mitdb --out .device-data/beats`; skipped without).
#   0. batched_teacher_check.py: two members (one a step shorter, D redrawn every step) against their single teachers on
#      CUDA, grouped kernels, captured graphs: weights within 5% of their movement? equivalence.json (exit 1 if not)
#   1. bench_batched.py --model teacher: synthetic beats, K = 1, 4, 8 teachers, grouped and loop kernels, bf16 autocast,
#      each step a CUDA graph: batched_teacher_amp.json; the same in float32 (the units' setting): batched_teacher_fp32.json
#   2. bench_batched.py --model student with --amp --impl grouped,loop (the students' check pending since issue 12):
#      batched_student_amp.json
#   3. on the real beats, the paper's teachers (BeatGAN protocol, paper selection, float32): one teacher of fold 0 for 2
#      epochs, then GROUP (default 5) units' teachers as one group for 2 epochs; the second epoch's training seconds of
#      each, and the speedup K x single / group: group_epochs.json (the figure the plan's calls are sized by)
# Usage (device call, timeout about 450 s):  bash bench/gpu_batched_teacher.sh OUT     env: STEPS (40), GROUP (5)
# Copy the figures into bench/batched.md with the card's name (OUT/gpu.txt), and size --teacher-group by them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?output folder}
PY=${PYTHON:-python3}
STEPS=${STEPS:-40}
GROUP=${GROUP:-5}
mkdir -p "$OUT"
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
gpu_env "$OUT" pydantic
DEVICE=${DEVICE:-cuda}
rc=0
run() {  # name, then bench_batched.py's arguments
  local name=$1; shift
  echo "== $name" | tee -a "$OUT/run.log"
  "$PY" bench/bench_batched.py --device "$DEVICE" --steps "$STEPS" --repeats 2 --json "$OUT/$name.json" "$@" 2>&1 | tee -a "$OUT/run.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
}
echo "== equivalence" | tee -a "$OUT/run.log"
"$PY" bench/batched_teacher_check.py --device "$DEVICE" --json "$OUT/equivalence.json" 2>&1 | tail -n 4 | tee -a "$OUT/run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
run batched_teacher_amp --model teacher --members 1,4,8 --impl grouped,loop --amp
run batched_teacher_fp32 --model teacher --members 1,4,8 --impl grouped
run batched_student_amp --model student --members 1,4,8 --impl grouped,loop --amp
DATASET=${DATASET:-.device-data/beats}
if [ -d "$DATASET" ]; then
  echo "== group_epochs ($GROUP teachers on $DATASET)" | tee -a "$OUT/run.log"
  WORK=$(mktemp -d)  # the scratch models stay off $OUT, even if the call is cut off
  "$PY" - "$DATASET" "$OUT" "$GROUP" "$DEVICE" "$WORK" <<'EOF' 2>&1 | grep -v " epoch " | tee -a "$OUT/run.log"
"""One paper teacher for 2 epochs, then GROUP units' teachers as one batched group for 2 epochs: the second epochs' seconds."""
import json
import sys
import time
from pathlib import Path

from sibeatgan.config import TeacherConfig
from sibeatgan.train.batched_teacher import run_train_teachers
from sibeatgan.train.teacher import run_train_teacher

dataset, out, k, device, work = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
units = [(fold, seed) for fold in range(5) for seed in range(3)][:k]  # the plan's order: fold 0 seeds 0-2, then fold 1
common = dict(split="beatgan", selection="paper", epochs=2, device=device)
t = time.perf_counter()
run_train_teacher(TeacherConfig(fold=0, seed=0, **common), dataset, work / "single", resume=False)
single_wall = time.perf_counter() - t
single = json.loads((work / "single" / "metrics.json").read_text())["history"]
t = time.perf_counter()
run_train_teachers([TeacherConfig(fold=f, seed=s, **common) for f, s in units], dataset, work / "group", resume=False)
group_wall = time.perf_counter() - t
group = json.loads((work / "group" / "metrics.json").read_text())["members"]
one, all_k = single[-1]["train_seconds"], group[0]["history"][-1]["train_seconds"]
result = {"units": units, "single_epoch2_train_s": one, "group_epoch2_train_s": all_k, "speedup": k * one / all_k,
          "single_epoch2_s": single[-1]["epoch_seconds"], "group_epoch2_s": group[0]["history"][-1]["epoch_seconds"],
          "single_wall_s": single_wall, "group_wall_s": group_wall, "single_beats": single[-1]["beats"],
          "group_beats": group[0]["history"][-1]["beats"], "n_train": [m["n_train"] for m in group]}
(out / "group_epochs.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  rm -rf "$WORK"
else
  echo "no $DATASET: the real-data group epochs are skipped" | tee -a "$OUT/run.log"
fi
echo "gpu_batched_teacher.sh exit $rc"
exit "$rc"
