"""The spool: its location, the write probe, and admission of new fetches by disk room."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ProxyFactory
from support.fakehub import FakeHub
from test_blob_cache import LAYER, blob_path, cache_root, cached_blobs

from proxy.cache.spool import (
    RETRY_AFTER_SECONDS,
    Spool,
    SpoolFull,
    probe_writable,
    spool_location,
)
from proxy.config import Settings, StorageLocation

MiB = 1024**2


def fake_statvfs(free: int, total: int = 100 * 1024**3) -> os.statvfs_result:
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
    return os.statvfs_result(
        (4096, 4096, total // 4096, free // 4096, free // 4096, 0, 0, 0, 0, 255)
    )


def test_location_names_the_variable_that_chose_it(tmp_path: Path) -> None:
    explicit = Settings(spool_dir=tmp_path / "spool")
    assert spool_location(explicit).describe() == f"PROXY_SPOOL_DIR={tmp_path / 'spool'}"
    local = Settings(storage=StorageLocation(path=tmp_path / "cache"))
    assert spool_location(local).variable == "PROXY_STORAGE"
    assert spool_location(local).path == tmp_path / "cache" / "spool"
    s3 = Settings(storage=StorageLocation(bucket="b"))
    assert spool_location(s3).variable == "PROXY_SPOOL_DIR"
    assert spool_location(s3).path.name == "registry-proxy-spool"


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


def test_admission_keeps_the_minimum_free(tmp_path: Path) -> None:
    admission = Spool(
        tmp_path, max_size=None, min_free=1024 * MiB, statvfs=lambda _: fake_statvfs(1030 * MiB)
    )
    admission.admit(None)
    admission.admit(6 * MiB)
    with pytest.raises(SpoolFull) as info:
        admission.admit(7 * MiB)
    response = info.value.to_response()
    assert response.status == 503
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    full = Spool(
        tmp_path, max_size=None, min_free=1024 * MiB, statvfs=lambda _: fake_statvfs(1024 * MiB)
    )
    with pytest.raises(SpoolFull, match="another download"):
        full.admit(None)


def test_admission_keeps_the_spool_within_its_budget(tmp_path: Path) -> None:
    (tmp_path / "1-spool").write_bytes(os.urandom(2 * MiB))
    admission = Spool(
        tmp_path, max_size=3 * MiB, min_free=0, statvfs=lambda _: fake_statvfs(50 * 1024**3)
    )
    assert 2 * MiB <= admission.used() <= 2 * MiB + 64 * 1024
    admission.admit(MiB // 2)
    with pytest.raises(SpoolFull, match=f"a blob of {2 * MiB} bytes"):
        admission.admit(2 * MiB)
    (tmp_path / "1-spool").unlink()
    admission.admit(2 * MiB)


async def test_no_new_fetch_when_the_disk_is_nearly_full(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Below the free-space floor misses get 503 + Retry-After; cached blobs are still served."""
    cached = fakehub.add_blob(LAYER, repo="library/golang")
    missing = fakehub.add_blob(LAYER[::-1], repo="library/golang")
    storage = StorageLocation(path=tmp_path / "shared-cache")
    warm = await make_proxy(fakehub, storage=storage)
    assert await (await warm.get(blob_path(cached))).read() == LAYER
    fakehub.reset_counts()

    # A floor no disk can keep: every new fetch is refused before anything goes upstream.
    full = await make_proxy(fakehub, storage=storage, spool_min_free=2**62)
    refused = await full.get(blob_path(missing))
    assert refused.status == 503
    assert refused.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert (await refused.json())["errors"][0]["code"] == "UNAVAILABLE"
    assert fakehub.blob_gets() == 0 and fakehub.cdn_gets() == 0
    hit = await full.get(blob_path(cached))
    assert hit.status == 200
    assert await hit.read() == LAYER


async def test_a_blob_larger_than_the_room_left_is_refused(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """The announced size is checked before a byte is spooled; nothing is cached or left."""
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub, spool_max_size=len(LAYER) - 1, spool_min_free=1)
    refused = await client.get(blob_path(digest))
    assert refused.status == 503
    assert "bytes" in (await refused.json())["errors"][0]["detail"]
    assert cached_blobs(client) == []
    assert list((cache_root(client) / "spool").iterdir()) == []
    small = fakehub.add_blob(b"small blob", repo="library/golang")
    assert (await client.get(blob_path(small))).status == 200
