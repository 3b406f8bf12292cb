#!/usr/bin/env bash
# BeatGAN teachers that differ only in their seed (fold 0, BeatGAN protocol, 2 epochs on 4,000 training beats), each
# evaluated on the same 27,144 test beats, their compact per-beat scores kept in this folder for bench/recompute.py.
# Run from the repository root:  bash bench/results/cpu-2026-12-03-seeds/run.sh .device-data/beats runs/seeds
# (one torch thread each, the seeds in parallel: on a 2-core machine shared by many jobs, two threads per process
# stalled on each other; SEEDS="0 1" by default).
set -euo pipefail
DS=${1:?dataset folder}; OUT=${2:?output folder}
SB=${SB:-sibeatgan}; SEEDS=${SEEDS:-0 1}
HERE=$(dirname "$0")
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
one() {
  local seed=$1
  $SB train-teacher -d "$DS" -o "$OUT/teacher_s$seed" --epochs 2 --fold 0 --selection paper --device cpu \
      --set seed="$seed" --set max_train_beats=4000 --no-progress --no-track
  $SB evaluate -d "$DS" -m "$OUT/teacher_s$seed" -o "$OUT/eval/teacher_s$seed" --set n_bootstrap=0 --set plots=false \
      --set device=cpu --no-track
  python "$HERE/../../recompute.py" keep "$OUT/eval/teacher_s$seed" "$HERE/teacher_s$seed"
}
for seed in $SEEDS; do one "$seed" > "$OUT.s$seed.log" 2>&1 & done
wait
