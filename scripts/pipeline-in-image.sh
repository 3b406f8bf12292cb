#!/usr/bin/env bash
# The check before a cluster: build the image (CPU base) if needed, then run the whole pipeline in it through
# kfp's DockerRunner on podman's Docker API, to a model registered as `staging` on an MLflow server with
# basic-auth that also runs from the image. Root, podman (scripts/podman-base.sh sets it up).
#
#   scripts/pipeline-in-image.sh [OUT] [-- options of scripts/pipeline_in_image.py]
#   SIBEATGAN_IMAGE=localhost/sibeatgan:0.1.0-abc scripts/pipeline-in-image.sh    (an image already built)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/pipeline-in-image}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$python" -c "import docker, kfp" 2>/dev/null || { echo "pipeline-in-image.sh: $python lacks the docker or kfp package" >&2; exit 1; }
image=${SIBEATGAN_IMAGE:-}
if [ -z "$image" ]; then
    image=$(scripts/build-image.sh --cpu localhost/sibeatgan | tail -1)
fi
mkdir -p "$out"
start=$(date +%s)
PYTHONPATH=$PWD MLFLOW_DISABLE_TELEMETRY=true "$python" scripts/pipeline_in_image.py --image "$image" --out "$out" "$@" \
    2>&1 | tee "$out/pipeline-in-image.log"
echo "pipeline-in-image.sh: $(( $(date +%s) - start )) s in all; log $out/pipeline-in-image.log"
