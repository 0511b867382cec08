"""Checks made once before serving, so that a deployment that cannot work fails at start-up.

A container whose spool cannot be written answers ``/healthz`` perfectly well and fails every
cache miss; a fetch limit that needs more memory than the container has works until the busiest
hour. Both are decided by the settings and the mounts alone, so they are checked before the
server listens, and the first problem stops the program with one line that names the variables
concerned and, for the disk, the path and the operating system's error.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from proxy.cache.inflight import MEMORY_WINDOW
from proxy.cache.spool import (
    SpoolLocation,
    SpoolRefused,
    probe_spool,
    probe_writable,
    spool_location,
)
from proxy.config import Settings
from proxy.config_values import human_bytes, written_size

MiB = 1024**2

# Memory the proxy needs with no fetch in progress (interpreter, libraries, the bounded
# in-memory manifest and tag caches) and for each upstream fetch in progress. An S3 upload
# holds the part being filled and the part being sent, plus botocore's buffers (37 MB measured
# for one 500 MB blob, docs/benchmarks.md); a fetch into a local cache holds only a chunk. On
# top of that, when the spool's disk is full a download streams through memory instead, at most
# MEMORY_WINDOW (8 MiB) ahead of its slowest client (proxy/cache/inflight.py).
# infra/registry_proxy_infra/sizing.py sizes Fargate tasks with the same figures.
BASE_MEMORY = 256 * MiB
S3_FETCH_MEMORY = 40 * MiB + MEMORY_WINDOW
FILESYSTEM_FETCH_MEMORY = 2 * MiB + MEMORY_WINDOW


class StartupError(Exception):
    """The proxy cannot serve with these settings or mounts; the message is one line."""


StatVfs = Callable[[Path], os.statvfs_result]


def check_startup(settings: Settings, *, statvfs: StatVfs = os.statvfs) -> None:
    """Raise ``StartupError`` for the first problem found; return when serving can start."""
    spool = spool_location(settings)
    check_spool(spool)
    if settings.storage.location.path is not None:
        check_writable(SpoolLocation("PROXY_STORAGE", settings.storage.location.path))
    check_memory(settings)
    check_spool_size(settings, spool, statvfs)


def check_spool(location: SpoolLocation) -> None:
    """The spool directory holds nothing the proxy did not make, and can be written."""
    try:
        probe_spool(location.path, refuse_foreign=True)
    except SpoolRefused as exc:
        raise StartupError(f"{location.describe()} {exc}") from None
    except OSError as exc:
        raise StartupError(
            f"{location.describe()} is not writable by uid {os.getuid()}: {_os_error(exc)}"
        ) from None


def check_writable(location: SpoolLocation) -> None:
    """The directory can be created and written, by the user the proxy runs as."""
    try:
        probe_writable(location.path)
    except OSError as exc:
        raise StartupError(
            f"{location.describe()} is not writable by uid {os.getuid()}: {_os_error(exc)}"
        ) from None


def fetch_memory(settings: Settings) -> int:
    """Memory one upstream fetch in progress needs, by where its bytes are stored."""
    return S3_FETCH_MEMORY if settings.storage.location.is_s3 else FILESYSTEM_FETCH_MEMORY


def check_memory(settings: Settings) -> None:
    if settings.upstream.memory_limit is None:
        return
    per_fetch = fetch_memory(settings)
    needed = BASE_MEMORY + settings.upstream.max_fetches * per_fetch
    if needed > settings.upstream.memory_limit:
        fitting = max(0, (settings.upstream.memory_limit - BASE_MEMORY) // per_fetch)
        raise StartupError(
            f"PROXY_MAX_UPSTREAM_FETCHES={settings.upstream.max_fetches} needs about "
            f"{human_bytes(needed)} of memory ({human_bytes(BASE_MEMORY)} plus "
            f"{human_bytes(per_fetch)} per fetch), more than "
            f"PROXY_MEMORY_LIMIT={written_size(settings.upstream.memory_limit)}: lower "
            f"PROXY_MAX_UPSTREAM_FETCHES to {fitting} or raise the memory"
        )


def check_spool_size(settings: Settings, spool: SpoolLocation, statvfs: StatVfs) -> None:
    """The spool budget and the free space to keep both fit on the spool's filesystem."""
    stats = statvfs(spool.path)
    capacity = stats.f_blocks * stats.f_frsize
    wanted = settings.storage.spool_min_free + (settings.storage.spool_max_size or 0)
    if wanted < capacity:
        return
    budget = (
        f"PROXY_SPOOL_MAX_SIZE={written_size(settings.storage.spool_max_size)} plus "
        if settings.storage.spool_max_size is not None
        else ""
    )
    raise StartupError(
        f"{budget}PROXY_SPOOL_MIN_FREE={written_size(settings.storage.spool_min_free)} do not fit "
        f"on the {human_bytes(capacity)} filesystem of {spool.describe()}: lower them or give "
        "the spool a larger disk"
    )


def _os_error(exc: OSError) -> str:
    """``Permission denied (EACCES)``: the words and the code to search for."""
    if exc.errno is None:
        return str(exc)
    return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
