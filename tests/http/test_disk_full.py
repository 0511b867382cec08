"""A full disk is not an outage: the cache (and its spool) on a small tmpfs, filled for real.

A pull larger than the free space (larger than the whole disk) still succeeds byte-exact,
streamed through a bounded memory window once neither the cache nor the spool takes more bytes;
the instance stays ready; the disk-full events are counted and logged once; eviction makes
room, and later pulls are cached again. Nothing half-written is ever left or served.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from support.cache_scan import scan_directory
from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory
from support.tmpfs import mounted_tmpfs

from proxy.config import StorageLocation
from proxy.http.routes import SERVICES

MiB = 1024 * 1024
DISK = 24 * MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small-disk", DISK) as path:
        yield path


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_a_pull_larger_than_the_free_space(
    small_disk: Path, fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    early = [blob(seed, 4 * MiB) for seed in range(3)]
    huge = blob(99, 40 * MiB)  # more than the free space, more than the whole disk
    later = blob(7, 4 * MiB)
    digests = [fakehub.add_blob(data, repo="library/golang") for data in (*early, huge, later)]
    client = await make_proxy(
        fakehub,
        location=StorageLocation(path=small_disk / "cache"),
        # No size limit: under one, a blob this large (over a quarter of it) would only be
        # streamed, never written to the cache (tests/http/test_prefetch.py); here the write must
        # meet the full disk itself.
        limit=None,
        spool_min_free=1,  # spool until the disk really fills (no room at all is test_spool)
    )
    services = client.app[SERVICES]

    async def get(digest: str) -> bytes:
        response = await client.get(f"/v2/library/golang/blobs/{digest}")
        assert response.status == 200
        return await response.read()

    for data, digest in zip(early, digests, strict=False):
        assert await get(digest) == data
    assert services.janitor.housekeeper.disk() is not None

    with structlog.testing.capture_logs() as logs:
        body = await asyncio.wait_for(get(digests[3]), 60)
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(huge).hexdigest()
        assert body == huge
        ready = await client.get("/readyz")
        assert ready.status == 200, await ready.text()

    full = [entry for entry in logs if entry["event"] == "disk.full"]
    assert len(full) == 1  # logged once, however many writes found no room
    events = services.metrics.housekeeping.disk_full
    assert events.labels("storage")._value.get() >= 1  # the cache write gave up ...
    assert events.labels("spool")._value.get() >= 1  # ... and so did the spool
    assert services.storage.errors == 0 and not services.storage.is_open  # no outage

    # The evictor was woken and made room; the next pull is cached again.
    evicted = services.metrics.housekeeping.evictions
    for _ in range(500):
        if evicted.labels("blob")._value.get() >= 1:
            break
        await asyncio.sleep(0.01)
    assert evicted.labels("blob")._value.get() >= 1
    assert await get(digests[4]) == later
    for _ in range(500):
        if services.blobs.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    report = scan_directory(small_disk / "cache")
    assert report.problems == [], report.describe()
    assert f"sha256:{hashlib.sha256(later).hexdigest()}" in report.digests
    assert f"sha256:{hashlib.sha256(huge).hexdigest()}" not in report.digests  # never half-kept
    assert report.temp_files == []  # nothing partial left in tmp/ or the spool
    fakehub.reset_counts()
    assert await get(digests[4]) == later
    assert fakehub.cdn_gets() == 0
