#!/bin/bash
# the same tiny verdict through the old code (718ec17) and the shared protocol (main)
ARGS="/tmp/vb/beats --device cpu --selection clean --teacher-epochs 2 --trials 2 --group-size 2 --tune-epochs 1 --final-epochs 2 --seeds 0,1 --max-train-beats 256 --student-max-train-beats 256 --n-bootstrap 50 --eval-bootstrap 0"
export MLFLOW_DISABLE_TELEMETRY=true
cd <a checkout of 718ec17> && PYTHONPATH=/work/wt/old timeout 1500 /work/main/.venv/bin/python bench/verdict.py $ARGS /tmp/vb/old > /tmp/vb/old.log 2>&1
cd <a checkout of this commit> && PYTHONPATH=/work/wt/snap timeout 1500 /work/main/.venv/bin/python bench/verdict.py $ARGS /tmp/vb/new > /tmp/vb/new.log 2>&1
echo done > /tmp/vb/done
