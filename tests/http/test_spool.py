"""A full spool disk is not a refused pull: with no room on the spool's disk, or less than a blob
needs, its bytes go through memory and the client gets the whole blob (the memory window's bound:
tests/unit/cache/test_spool.py; the real thing on a small tmpfs: tests/http/test_disk_full.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory, blob_path, cache_root, cached_blobs, downloads_settled

from proxy.config import StorageLocation
from proxy.http.routes import SERVICES

LAYER = bytes(range(256)) * 4096 * 3  # 3 MiB: several upstream chunks


def spool_files(directory: Path) -> list[Path]:
    """What the spool holds besides its marker."""
    return [p for p in (directory / "registry-proxy-spool").iterdir() if p.name[0] != "."]


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
    await downloads_settled(client)
    assert [path.read_bytes() for path in cached_blobs(client)] == [LAYER]
    assert spool_files(cache_root(client) / "spool") == []
    small = fakehub.add_blob(b"small blob", repo="library/golang")
    assert (await client.get(blob_path(small))).status == 200
