# syntax=docker/dockerfile:1
# The base of both stages: any image with Python 3.11 (python3, with venv) and useradd. CI builds
# on a Debian bookworm base it makes itself (tests/e2e/test_image.py), since no registry's
# python image is reachable there.
ARG BASE_IMAGE=python:3.11-slim

# Build stage: resolve and install the package into a virtualenv (wheels only, no compiler needed).
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# Final stage: the virtualenv, a non-root user and its two writable directories, nothing else.
FROM ${BASE_IMAGE}
# The spool (downloads in progress) and the local cache are created here, owned by the runtime
# user, and declared as volumes: a volume mounted there (a Fargate bind mount, a Docker named
# volume) takes this ownership, where an undeclared path would be root's and unwritable.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/registry-proxy --create-home \
        registry-proxy \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/registry-proxy/spool /var/lib/registry-proxy/cache
COPY --from=build /opt/venv /opt/venv
# MALLOC_ARENA_MAX=2: glibc's per-thread arenas (file I/O runs in threads) made RSS creep under
# long load runs; two arenas keep it flat (docs/benchmarks.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    PROXY_LISTEN=0.0.0.0:5000 \
    PROXY_STORAGE=/var/lib/registry-proxy/cache \
    PROXY_SPOOL_DIR=/var/lib/registry-proxy/spool \
    PROXY_LOG_FORMAT=json
VOLUME ["/var/lib/registry-proxy/spool", "/var/lib/registry-proxy/cache"]
USER 10001:10001
WORKDIR /var/lib/registry-proxy
EXPOSE 5000
# ECS stops tasks with SIGTERM: the proxy drains and exits within PROXY_SHUTDOWN_GRACE seconds
# (set the task's stopTimeout a little longer).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["registry-proxy", "healthcheck"]
ENTRYPOINT ["registry-proxy"]
CMD ["serve"]
