#!/usr/bin/env bash
# The teacher's GPU checks in one script, for an H100/H200 (needs only python with torch and numpy;
# the training run also needs PyYAML, the split module's one extra import):
#   1. bench/bench_teacher.py: scoring beats/s (fp32, bf16) and training epoch time in three modes:
#      eager, CUDA graph, CUDA graph + bf16 autocast;
#   2. given a dataset folder (from `sibeatgan preprocess`, carried along), a fold-0 BeatGAN-protocol
#      training run with paper selection (best validation AUC), then its test AUC/AP.
# Usage, from anywhere:  bash bench/gpu_teacher.sh [DATASET_DIR] [EPOCHS=100]
# Results go to $OUT (default bench/out/gpu): gpu.txt, bench_teacher.json/.log, train_fold0/, train_fold0.json/.log
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
DATASET=${1:-}
EPOCHS=${2:-100}
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c 'import sys, torch; torch.cuda.is_available() or sys.exit("gpu_teacher.sh: CUDA is not available"); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$OUT/gpu.txt" 2>&1 || true

"$PY" bench/bench_teacher.py ${DATASET:+--dataset "$DATASET"} --check-graph --modes eager,graph,graph-amp --epochs 3 \
  --json "$OUT/bench_teacher.json" 2>&1 | tee "$OUT/bench_teacher.log"

if [ -z "$DATASET" ]; then
  echo "no dataset folder given: training run skipped"
  exit 0
fi
"$PY" - "$DATASET" "$EPOCHS" "$OUT" <<'EOF' 2>&1 | tee "$OUT/train_fold0.log"
"""Fold-0 paper-protocol teacher run on the GPU, then AUC/AP on its test split (numpy metrics, no sklearn)."""
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
dataset, epochs, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
try:
    from sibeatgan.config import TeacherConfig
    from sibeatgan.data.splits import make_split
except ImportError as err:
    sys.exit(f"training run skipped: {err} (sibeatgan.config needs PyYAML)")
from sibeatgan.data.artifact import CLASSES, load
from sibeatgan.evaluate import ranked_metrics, score
from sibeatgan.train.checkpoint import load_generator
from sibeatgan.train.teacher import run_train_teacher

config = TeacherConfig(fold=0, split="beatgan", selection="paper", epochs=epochs, device="cuda", cuda_graph=True, amp=False)
start = time.perf_counter()
result = run_train_teacher(config, dataset, out / "train_fold0", resume=False)
wall = time.perf_counter() - start
history = json.loads(Path(result["metrics"]).read_text())["history"]
gen, meta = load_generator(result["generator"], "cuda")
ds = load(dataset)
split = make_split(ds, "beatgan", 0, config.val_fraction, config.seed)
labels = ds.labels[split.test]
scores = score(gen, torch.from_numpy(ds.float_beats(split.test)), 4096, "cuda")
m = ranked_metrics(scores, labels != 0)
per_class = {}
for i, name in enumerate(CLASSES[1:], start=1):
    keep = (labels == 0) | (labels == i)
    if (labels == i).any():
        per_class[name] = ranked_metrics(scores[keep], labels[keep] == i)["auc"]
summary = {
    "test_auc": m["auc"], "test_ap": m["ap"], "test_f1": m["f1"], "per_class_auc": per_class,
    "best_epoch": result["best_epoch"], "best_val_auc": result["best_metric"], "epochs": len(history),
    "n_train": result["n_train"], "n_test": int(len(split.test)), "wall_s": wall,
    "median_epoch_train_s": float(np.median([h["train_seconds"] for h in history[1:] or history])),
    "median_epoch_total_s": float(np.median([h["epoch_seconds"] for h in history[1:] or history])),
    "d_reinits": int(sum(h["d_reinits"] for h in history)), "runtime": result["runtime"],
    "paper": {"auc": 0.9447, "auc_sd": 0.0053, "ap": 0.9108, "ap_sd": 0.0049},
}
(out / "train_fold0.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
