# syntax=docker/dockerfile:1
# The project's CPU image: the flywheel library and CLI, Prefect (server, services, worker), MLflow's server,
# Dask. One image for every non-GPU service of docker-compose.yml; Dockerfile.gpu is the CUDA variant.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin flywheel

WORKDIR /app

# Dependencies first, so a code change does not reinstall them. requirements.lock pins torch==2.13.0 without the
# "+cpu" local tag (`make lock` strips it): PyPI's Linux wheel of that version is the multi-GB CUDA build, and
# PyTorch's CPU index offers 2.13.0+cpu, which `==2.13.0` matches and pip prefers (a local version sorts higher).
COPY requirements.lock ./
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock

# The project itself: the packages of pyproject.toml (flywheel, models, tasks, flows), installed without
# dependencies (the lock has them all) and without build isolation (setuptools came with the lock's torch).
COPY pyproject.toml README.md ./
COPY flywheel ./flywheel
COPY models ./models
COPY tasks ./tasks
COPY flows ./flows
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && rm -rf build *.egg-info

# What the flows read at run time from the repository root (FLYWHEEL_REPO=/app): deployments, configs, policies,
# the golden set. No .env and nothing secret: .dockerignore keeps them out of the build context too.
COPY prefect.yaml ./
COPY docker/prefect ./docker/prefect
COPY configs ./configs
COPY policies ./policies
COPY golden_data ./golden_data

# State lives in volumes mounted here; created now so that a fresh named volume inherits the owner. policies/ too:
# docker-compose.yml mounts the `policies` volume there, seeded from this copy, and the workbench publishes into it.
RUN mkdir -p /var/lib/flywheel /var/lib/mlflow/artifacts \
    && chown -R flywheel:flywheel /var/lib/flywheel /var/lib/mlflow /app/policies

# No hub, no telemetry: models come from the registry or from pip packages, never from a download at run time.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    FLYWHEEL_HOME=/var/lib/flywheel \
    FLYWHEEL_REPO=/app \
    PREFECT_HOME=/var/lib/flywheel/prefect

USER flywheel
