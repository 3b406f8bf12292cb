# One image for every pipeline component and for the MLflow server (mlflow[auth]): sibeatgan pinned by requirements.lock.
#
# BASE brings python (3.11+, `python`, `python3` and `pip` on PATH) and torch; requirements.lock pins everything else.
# The default is the CUDA PyTorch runtime, for GPU nodes. scripts/podman-base.sh makes a CPU one from Debian
# (debootstrap, the CPU torch wheel in /opt/venv) for machines with no registry: scripts/build-image.sh --cpu.
ARG BASE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

# The name the image is pushed under (scripts/build-image.sh sets it): tracking tags every run with it.
ARG IMAGE_NAME=unknown
# The malloc settings bench/teacher.md recommends (no mmap/trim churn for the large beat arrays).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MALLOC_MMAP_THRESHOLD_=4294967296 \
    MALLOC_TRIM_THRESHOLD_=4294967296

WORKDIR /opt/sibeatgan
# Dependencies first (their layer is reused while only the code changes); --no-deps keeps the base's torch.
COPY requirements.lock ./
RUN python -c "import torch, sys; print('base: python', sys.version.split()[0], 'torch', torch.__version__)" \
    && pip install --no-cache-dir --no-deps -r requirements.lock

# After the dependencies: the name changes with every commit, and an ENV above them would rebuild their layer each time.
ENV SIBEATGAN_IMAGE=${IMAGE_NAME}
COPY pyproject.toml README.md ./
COPY sibeatgan ./sibeatgan
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && sibeatgan --help > /dev/null \
    && python -c "import flask_wtf" \
    && useradd --create-home --uid 10001 --user-group sibeatgan

USER 10001
WORKDIR /home/sibeatgan
CMD ["sibeatgan", "--help"]
