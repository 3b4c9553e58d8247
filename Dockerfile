# syntax=docker/dockerfile:1
# The poller service image. How it is built, run and deployed: deploy/README.md.
#
#   docker build -t poller:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm poller:0.1.0 --version
#   docker run --rm --stop-timeout 60 -p 10027:10027 -v "$PWD/my.yaml:/etc/poller/poller.yaml:ro" poller:0.1.0
#
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount steps. Linted by
# scripts/lint-deploy (hadolint); tests/integration/test_entrypoint.py checks the ENTRYPOINT, CMD,
# HEALTHCHECK, USER and STOPSIGNAL lines below and runs them outside a container.

# ---------------------------------------------------------------------------- build: wheels only
# Nothing of this stage reaches the image but the wheels, and those only through a bind mount.
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# 1. Dependencies, from pyproject.toml alone, so that a code change does not rebuild them. The
#    list is read with tomllib (Python 3.11+), so no stub package is needed. Every dependency has
#    binary wheels for linux/amd64 and linux/arm64: no compiler is needed here either.
#    constraints.txt pins them, and their own dependencies, to the versions CI tested.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip wheel --wheel-dir /wheels/deps --requirement requirements.txt --constraint constraints.txt \
 && cp requirements.txt /wheels/deps/requirements.txt

# 2. The application wheel; its dependencies are the wheels above.
COPY README.md ./
COPY poller ./poller
RUN pip wheel --no-deps --wheel-dir /wheels/app .

# ---------------------------------------------------------------------------- runtime
FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="poller" \
      org.opencontainers.image.description="Self-hosted AWS Lambda event source mappings: Kinesis, DynamoDB Streams and SQS into Lambda, HTTP or Python targets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="deploy/README.md" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/poller/venv \
    PATH=/opt/poller/venv/bin:$PATH

# The service user (uid/gid 10001, no login, no home of its own) and the one writable directory:
# /var/lib/poller, for SQLite checkpoints when that backend is used. /etc/poller is root's.
RUN groupadd --system --gid 10001 poller \
 && useradd --system --uid 10001 --gid poller --no-create-home --home-dir /var/lib/poller \
      --shell /usr/sbin/nologin poller \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/poller \
 && install -d -m 0755 /etc/poller \
 && python -m venv /opt/poller/venv

# Dependencies (cached while pyproject.toml is unchanged), then the application. Both come from
# the build stage's wheels only (--no-index): the image never builds anything. pip compiles the
# bytecode at install time, so a read-only root filesystem costs no start-up time.
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/wheels/deps \
    pip install --no-index --find-links /wheels/deps --requirement /wheels/deps/requirements.txt
RUN --mount=type=bind,from=build,source=/wheels/app,target=/wheels/app \
    pip install --no-index --no-deps /wheels/app/poller-*.whl \
 && pip check

# The default configuration: one stream mapping driven by environment variables (see the file).
COPY deploy/config/poller.ecs.yaml /etc/poller/poller.yaml

# A relative checkpoints.path (the default, poller-checkpoints.db) lands on the volume.
WORKDIR /var/lib/poller
VOLUME ["/var/lib/poller"]
USER 10001:10001

# /metrics, /healthz and /readyz (the observability section of the config).
EXPOSE 10027

# poller drains on SIGTERM: intake stops, in-flight batches finish and are checkpointed within
# shutdown.drain_timeout_seconds (30 s by default), and it exits 0. Give the container longer
# than that before SIGKILL: `docker stop -t 60`, compose stop_grace_period, ECS stopTimeout 60.
STOPSIGNAL SIGTERM

# Liveness: /healthz fails when the event loop has stopped ticking. The slim image has no curl,
# so the check is Python's urllib; urlopen raises (exit 1) on a refused connection, a timeout or
# any 4xx/5xx answer. It follows POLLER_OBSERVABILITY__PORT when the port is overridden that way.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('POLLER_OBSERVABILITY__PORT', '10027') + '/healthz', timeout=4)"]

# Exec form: the poller process itself is PID 1 and receives SIGTERM directly (no shell in
# between to swallow it). No tini: poller installs its own SIGTERM and SIGINT handlers and starts
# no child processes, so there is nothing to forward signals to and no zombie to reap. Where
# something else runs processes inside the container (ECS Exec sessions, docker exec), let the
# orchestrator add its init: ECS linuxParameters.initProcessEnabled (set in deploy/ecs), or
# `docker run --init`.
ENTRYPOINT ["poller"]
CMD ["run", "--config", "/etc/poller/poller.yaml"]
