#!/usr/bin/env bash
# Set up, then run the whole local chain on synthetic data (no cluster, no download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true
exec "${VENV:-.venv}/bin/sibeatgan" demo --out "${1:-runs/demo}"
