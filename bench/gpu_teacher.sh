#!/usr/bin/env bash
# The teacher's GPU checks in one script, for an H100/H200 (needs python with torch and numpy; the training
# runs also need PyYAML and pydantic, which sibeatgan.config imports: carry pydantic's wheels, bench/README.md):
#   1. bench/bench_teacher.py (SKIP_BENCH=1 skips it): scoring beats/s (fp32, bf16; beats on the device, and
#      with the one host-to-device copy) and training epoch time in the modes eager, graph, graph-amp;
#   2. given a dataset folder (from `sibeatgan preprocess`, carried along), for each fold in FOLDS (default 0):
#      a BeatGAN-protocol training run with paper selection (best validation AUC), then run_evaluate on its
#      test split (the metrics of `sibeatgan evaluate`, 200 bootstrap resamples): train_fold<k>.json;
#   3. folds.json: mean and sd over every train_fold*.json in $OUT (the paper reports the five-fold mean).
# One device call may run 10 minutes, so the five folds take several calls (e.g. FOLDS=0, then FOLDS=1,2,
# then FOLDS=3,4, with SKIP_BENCH=1 after the first); gather their train_fold*.json in one folder and run
# SUMMARY_ONLY=1 there (no GPU needed) for the five-fold folds.json.
# Usage, from anywhere:
#   [FOLDS=0,1] [SKIP_BENCH=1] [OUT=dir] bash bench/gpu_teacher.sh [DATASET_DIR] [EPOCHS=100]
#   SUMMARY_ONLY=1 OUT=dir bash bench/gpu_teacher.sh
# Results go to $OUT (default bench/out/gpu): gpu.txt, bench_teacher.json/.log, train_fold<k>/ (checkpoint,
# generator, metrics), eval_fold<k>/ (evaluation.json, scores), train_fold<k>.json, train.log, folds.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
DATASET=${1:-}
EPOCHS=${2:-100}
FOLDS=${FOLDS:-0}
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! [[ "$FOLDS" =~ ^[0-4](,[0-4])*$ ]]; then
  echo "gpu_teacher.sh: FOLDS must be a comma list of folds 0-4 (e.g. 0 or 1,2), got '$FOLDS'" >&2
  exit 2
fi

summarize() {
  "$PY" - "$OUT" <<'EOF'
"""folds.json: mean and sd of the test metrics over every train_fold<k>.json in the folder."""
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {int(p.stem.removeprefix("train_fold")): json.loads(p.read_text()) for p in sorted(out.glob("train_fold[0-4].json"))}
if not runs:
    sys.exit(f"no train_fold<k>.json in {out}: nothing to summarize")


def spread(values):
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}


summary = {"folds": sorted(runs), "complete": sorted(runs) == [0, 1, 2, 3, 4]}
for key in ("test_auc", "test_ap", "test_f1"):
    summary[key] = spread([r[key] for r in runs.values()])
classes = sorted({c for r in runs.values() for c in r["per_class_auc"]})
summary["per_class_auc"] = {c: spread([r["per_class_auc"][c] for r in runs.values() if c in r["per_class_auc"]]) for c in classes}
summary["paper"] = {"auc": 0.9447, "auc_sd": 0.0053, "ap": 0.9108, "ap_sd": 0.0049}
(out / "folds.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
}

if [ "${SUMMARY_ONLY:-0}" = 1 ]; then
  summarize
  exit 0
fi

"$PY" -c 'import sys, torch; torch.cuda.is_available() or sys.exit("gpu_teacher.sh: CUDA is not available"); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$OUT/gpu.txt" 2>&1 || true

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  "$PY" bench/bench_teacher.py ${DATASET:+--dataset "$DATASET"} --check-graph --modes eager,graph,graph-amp --epochs 3 \
    --json "$OUT/bench_teacher.json" 2>&1 | tee "$OUT/bench_teacher.log"
fi

if [ -z "$DATASET" ]; then
  echo "no dataset folder given: training runs skipped"
  exit 0
fi
"$PY" - "$DATASET" "$EPOCHS" "$OUT" "$FOLDS" <<'EOF' 2>&1 | tee -a "$OUT/train.log"
"""Paper-protocol teacher runs on the GPU, one per fold, each evaluated as `sibeatgan evaluate` does."""
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
dataset, epochs, out, folds = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), [int(f) for f in sys.argv[4].split(",")]
try:
    from sibeatgan.config import EvaluateConfig, TeacherConfig
except ImportError as err:
    sys.exit(f"training runs skipped: {err} (sibeatgan.config needs PyYAML)")
from sibeatgan.evaluate import run_evaluate
from sibeatgan.train.teacher import run_train_teacher

for fold in folds:
    config = TeacherConfig(fold=fold, split="beatgan", selection="paper", epochs=epochs, device="cuda", cuda_graph=True, amp=False)
    start = time.perf_counter()
    result = run_train_teacher(config, dataset, out / f"train_fold{fold}", resume=False)
    wall = time.perf_counter() - start
    history = json.loads(Path(result["metrics"]).read_text())["history"]
    start = time.perf_counter()
    evaluation = run_evaluate(EvaluateConfig(device="cuda", n_bootstrap=200, plots=False), dataset, {fold: Path(result["generator"])},
                              out / f"eval_fold{fold}")
    m = evaluation["folds"][str(fold)]
    summary = {
        "fold": fold, "test_auc": m["auc"], "test_ap": m["ap"], "test_f1": m["f1"], "test_auc_ci": m["auc_ci"],
        "per_class_auc": {c: v["auc"] for c, v in m["per_class"].items()},
        "best_epoch": result["best_epoch"], "best_val_auc": result["best_metric"], "epochs": len(history),
        "n_train": result["n_train"], "n_test": m["n"], "train_wall_s": wall, "evaluate_wall_s": time.perf_counter() - start,
        "median_epoch_train_s": float(np.median([h["train_seconds"] for h in history[1:] or history])),
        "median_epoch_total_s": float(np.median([h["epoch_seconds"] for h in history[1:] or history])),
        "d_reinits": int(sum(h["d_reinits"] for h in history)), "runtime": result["runtime"],
        "paper": {"auc": 0.9447, "auc_sd": 0.0053, "ap": 0.9108, "ap_sd": 0.0049},
    }
    (out / f"train_fold{fold}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2), flush=True)
EOF
summarize
