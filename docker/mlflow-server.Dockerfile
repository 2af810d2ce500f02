# syntax=docker/dockerfile:1
#
# The MLflow tracking server of charts/lightreasoner on a slim Python base: only the server's packages
# (mlflow, boto3 for S3 artifacts, psycopg2-binary for PostgreSQL, flask-wtf for the basic-auth app,
# prometheus-flask-exporter for --expose-prometheus), not the multi-GB CUDA training image.
#
#   docker build -f docker/mlflow-server.Dockerfile -t ghcr.io/lightreasoner/mlflow-server:0.1.0 .
#   docker run --rm -p 5000:5000 ghcr.io/lightreasoner/mlflow-server:0.1.0 server --host 0.0.0.0
#
# Versions: the same docker/requirements.lock as the training image (the constraint pins every
# transitive dependency too); tests/test_chart.py checks the pins below equal the lock's.
# Python 3.11: the interpreter the lock is resolved with.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE}

ARG APP_UID=10001
ARG APP_GID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

# The lock file is bind-mounted, not copied: no layer keeps it.
RUN --mount=type=bind,source=docker,target=/tmp/lock \
    python -m pip install --no-cache-dir --constraint /tmp/lock/requirements.lock \
        mlflow==3.17.2 \
        boto3==1.44.8 \
        psycopg2-binary==2.9.13 \
        flask-wtf==1.3.0 \
        prometheus-flask-exporter==0.23.2 \
    && mlflow --version

# Non-root user (the chart's podSecurityContext runs as 10001) with a writable home.
RUN groupadd --gid "${APP_GID}" app \
    && useradd --uid "${APP_UID}" --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

USER ${APP_UID}:${APP_GID}
WORKDIR /home/app
EXPOSE 5000

ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
