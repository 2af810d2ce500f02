# syntax=docker/dockerfile:1
#
# The one image every LightReasoner component runs in: Kubeflow pipeline steps, the MLflow tracking
# server of charts/lightreasoner, and the schedule hook Job.
#
#   docker build -t ghcr.io/lightreasoner/lightreasoner:0.1.0 .
#   docker run --rm --gpus all ghcr.io/lightreasoner/lightreasoner:0.1.0 --help
#
# Base: PyTorch with CUDA 12.8 and cuDNN 9 (runtime flavour, no compilers). Its torch version is pinned
# by the tag and held by docker/constraints.txt; every other Python package is pinned in
# docker/requirements.lock (regenerate with scripts/lock-image-deps.py).
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

# --- build: a wheel of this repository (no dependencies) ------------------------------------------
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lightreasoner ./lightreasoner
COPY components ./components
COPY pipelines ./pipelines
COPY configs ./configs
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG APP_UID=10001
ARG APP_GID=10001
# Model cache (Hugging Face): override at build time, or at run time with -e HF_HOME=/some/volume.
ARG HF_HOME=/var/cache/lightreasoner/huggingface

# No usage telemetry (MLflow's, and any library honouring DO_NOT_TRACK): clusters are often offline.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=${HF_HOME} \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

# Dependencies first (pinned, changes rarely), so code changes only rebuild the small layer below.
# The lock files are bind-mounted, not copied: no layer keeps them.
RUN --mount=type=bind,source=docker,target=/tmp/lock \
    python -m pip install --no-cache-dir --constraint /tmp/lock/constraints.txt \
        --requirement /tmp/lock/requirements.lock

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-deps /wheels/lightreasoner-*.whl \
    && lightreasoner --version

# Example configs, e.g. --config /opt/lightreasoner/configs/paper-qwen2.5-math.yaml
COPY configs /opt/lightreasoner/configs

# Non-root user with a writable home and model cache (HF_HOME); mount a volume there to keep models
# between runs (the CLI sets TOKENIZERS_PARALLELISM itself).
RUN groupadd --gid "${APP_GID}" app \
    && useradd --uid "${APP_UID}" --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && mkdir -p "${HF_HOME}" /work \
    && chown -R app:app "${HF_HOME}" /work \
    && chmod 0775 "${HF_HOME}" /work

USER ${APP_UID}:${APP_GID}
WORKDIR /work

ENTRYPOINT ["lightreasoner"]
CMD ["--help"]
