#!/usr/bin/env bash
# Set up, then run the test suite. Extra arguments go to pytest (e.g. -k teacher, -m "not mitdb").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
