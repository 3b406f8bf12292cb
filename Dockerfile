# One image for every pipeline component: CUDA-capable PyTorch plus sibeatgan, pinned by requirements.lock.
# torch comes from the base image (built for CUDA 12.8); requirements.lock pins everything else.
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

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
RUN pip install --no-cache-dir --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY sibeatgan ./sibeatgan
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && sibeatgan --help > /dev/null

RUN useradd --create-home --uid 10001 --user-group sibeatgan
USER 10001
WORKDIR /home/sibeatgan
CMD ["sibeatgan", "--help"]
