# Sourced by the GPU scripts (bench/gpu_paper.sh, bench/gpu_batched_teacher.sh), from the repository root with $PY set:
#   gpu_env OUT MODULE...   installs the wheels carried in .whl/ into /tmp/site when a MODULE does not import,
#                           puts the repository (and /tmp/site) on PYTHONPATH, and writes the card to OUT/gpu.txt.
gpu_env() {
  local out=$1; shift
  local imports
  imports=$(IFS=,; echo "$*")
  if [ -d .whl ] && ! "$PY" -c "import $imports" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import torch, $imports; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" \
    | tee "$out/gpu.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$out/gpu.txt" 2>&1 || true
}
