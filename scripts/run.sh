#!/usr/bin/env bash
# Set up, then run the whole pipeline locally (kfp's local runner) on synthetic data: no cluster, no download.
# It ends with the winner registered under alias `staging` in runs/mlflow.db, the store every `sibeatgan` command
# uses. Extra arguments go to `python -m pipelines.local` (e.g. --source ../shared/data/mitdb); the first, if it is
# not an option, is the output folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true
out=runs/pipeline
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out=$1; shift; fi
exec "${VENV:-.venv}/bin/python" -m pipelines.local --out "$out" "$@"
