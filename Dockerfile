# syntax=docker/dockerfile:1
#
# The gateway's container image (FR-010): a builder stage installs the locked
# runtime dependencies and the gateway into /app/.venv with uv; the runtime
# stage is a slim Python with that venv only (the gateway package is installed
# into it, non-editable), run as a non-root user.
#
#   docker build -t gateway .
#   docker run --rm -p 8080:8080 -e SERVICE1_URL=http://host.docker.internal:8001 gateway
#
# Configuration is the environment only (README "Configuration"); nothing
# about the backends is baked into the image. tests/test_deploy.py runs this
# file's install steps for real on every test run.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- builder
# Same base as the runtime: the venv's interpreter link (/usr/local/bin/python3.11)
# must exist unchanged in the final image.
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# 1. Dependencies only: this layer is rebuilt only when the lock changes, not
#    on every code edit.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# 2. The gateway itself (README.md is the package's readme metadata).
COPY README.md ./
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=builder /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# SIGTERM drains: /health turns 503 "draining", in-flight requests finish
# (GATEWAY_DRAIN_DELAY + GATEWAY_SHUTDOWN_TIMEOUT), then exit 0. Give
# `docker stop` at least that long (`docker stop -t`, compose stop_grace_period).
STOPSIGNAL SIGTERM
# No curl in a slim image: Python's urllib. Unhealthy on 503 (starting, draining)
# or no answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]
CMD ["gateway"]
