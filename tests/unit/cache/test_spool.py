"""The spool: its location, the write probe, and where new fetches go by disk room.

With no room on the spool's disk a new fetch is not refused: its bytes go through memory
(tests/test_spool_buffer.py bounds that memory), and the client gets the whole blob.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory, blob_path, cache_root, cached_blobs
from support.settings import settings_with

from proxy.cache.spool import Spool, probe_writable, spool_location
from proxy.config import StorageLocation
from proxy.http.routes import SERVICES

LAYER = bytes(range(256)) * 4096 * 3  # 3 MiB: several upstream chunks

MiB = 1024**2


def fake_statvfs(free: int, total: int = 100 * 1024**3) -> os.statvfs_result:
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
    return os.statvfs_result(
        (4096, 4096, total // 4096, free // 4096, free // 4096, 0, 0, 0, 0, 255)
    )


def test_location_names_the_variable_that_chose_it(tmp_path: Path) -> None:
    explicit = settings_with(spool_dir=tmp_path / "spool")
    assert spool_location(explicit).describe() == f"PROXY_SPOOL_DIR={tmp_path / 'spool'}"
    local = settings_with(location=StorageLocation(path=tmp_path / "cache"))
    assert spool_location(local).variable == "PROXY_STORAGE"
    assert spool_location(local).path == tmp_path / "cache" / "spool"
    s3 = settings_with(location=StorageLocation(bucket="b"))
    assert spool_location(s3).variable == "PROXY_SPOOL_DIR"
    assert spool_location(s3).path.name == "registry-proxy-spool"


def spool_files(directory: Path) -> list[Path]:
    """What the spool holds besides its marker."""
    return [p for p in (directory / "registry-proxy-spool").iterdir() if p.name[0] != "."]


def test_probe_creates_the_directory_and_leaves_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "spool"
    probe_writable(directory)
    assert directory.is_dir()
    assert list(directory.iterdir()) == []


def test_probe_fails_where_a_file_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with pytest.raises(OSError):
        probe_writable(blocker / "spool")
    with pytest.raises(OSError):
        probe_writable(blocker)


def test_room_keeps_the_minimum_free(tmp_path: Path) -> None:
    spool = Spool(
        tmp_path, max_size=None, min_free=1024 * MiB, statvfs=lambda _: fake_statvfs(1030 * MiB)
    )
    assert spool.has_room(None)
    assert spool.has_room(6 * MiB)
    assert not spool.has_room(7 * MiB)
    full = Spool(
        tmp_path, max_size=None, min_free=1024 * MiB, statvfs=lambda _: fake_statvfs(1024 * MiB)
    )
    assert not full.has_room(None)
    reports: list[tuple[str, str]] = []
    full.on_full = lambda where, detail: reports.append((where, detail))
    buffer = full.new_buffer()  # no room: memory only, and the disk-full alarm hears of it
    assert buffer.spilled and buffer.on_disk == 0
    assert buffer.path is None  # no file was made
    assert reports == [("spool", "no room on the spool")]
    buffer.close()


def test_room_keeps_the_spool_within_its_budget(tmp_path: Path) -> None:
    spool = Spool(
        tmp_path, max_size=3 * MiB, min_free=0, statvfs=lambda _: fake_statvfs(50 * 1024**3)
    )
    spool.open()
    (spool.files / "downloading").write_bytes(os.urandom(2 * MiB))
    assert 2 * MiB <= spool.used() <= 2 * MiB + 64 * 1024
    assert spool.has_room(MiB // 2)
    assert not spool.has_room(2 * MiB)
    (spool.files / "downloading").unlink()
    assert spool.has_room(2 * MiB)


async def test_no_room_on_the_disk_streams_through_memory(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Below the free-space floor a miss is still served whole (not a 503), without writing a
    byte to the spool; cached blobs are served as ever."""
    cached = fakehub.add_blob(LAYER, repo="library/golang")
    missing = fakehub.add_blob(LAYER[::-1], repo="library/golang")
    storage = StorageLocation(path=tmp_path / "shared-cache")
    warm = await make_proxy(fakehub, location=storage)
    assert await (await warm.get(blob_path(cached))).read() == LAYER

    # A floor no disk can keep: no new fetch may use the spool.
    full = await make_proxy(fakehub, location=storage, spool_min_free=2**62)
    served = await full.get(blob_path(missing))
    assert served.status == 200
    assert await served.read() == LAYER[::-1]
    assert spool_files(tmp_path / "shared-cache" / "spool") == []
    events = full.app[SERVICES].metrics.housekeeping.disk_full
    assert events.labels("spool")._value.get() >= 1
    hit = await full.get(blob_path(cached))
    assert hit.status == 200
    assert await hit.read() == LAYER


async def test_a_blob_larger_than_the_room_left_streams_through_memory(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """The announced size is checked before a byte is spooled: a blob that does not fit goes
    through memory, whole and verified, and is cached (the cache storage has room)."""
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub, spool_max_size=len(LAYER) - 1, spool_min_free=1)
    served = await client.get(blob_path(digest))
    assert served.status == 200
    assert await served.read() == LAYER
    for _ in range(500):
        if client.app[SERVICES].blobs.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert [path.read_bytes() for path in cached_blobs(client)] == [LAYER]
    assert spool_files(cache_root(client) / "spool") == []
    small = fakehub.add_blob(b"small blob", repo="library/golang")
    assert (await client.get(blob_path(small))).status == 200
