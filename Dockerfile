# syntax=docker/dockerfile:1
# Build stage: resolve and install the package into a virtualenv (wheels only, no compiler needed).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --only-binary=:all: . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# Final stage: the virtualenv and a non-root user, nothing else.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/registry-proxy --create-home proxy
COPY --from=build /opt/venv /opt/venv
# MALLOC_ARENA_MAX=2: glibc's per-thread arenas (file I/O runs in threads) made RSS creep under
# long load runs; two arenas keep it flat (docs/benchmarks.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    PROXY_LISTEN=0.0.0.0:5000 \
    PROXY_STORAGE=/var/lib/registry-proxy/cache \
    PROXY_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/registry-proxy
EXPOSE 5000
# ECS stops tasks with SIGTERM: the proxy drains for PROXY_SHUTDOWN_GRACE seconds (set the task's
# stopTimeout a little longer).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["registry-proxy", "healthcheck"]
ENTRYPOINT ["registry-proxy"]
CMD ["serve"]
