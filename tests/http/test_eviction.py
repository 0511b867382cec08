"""The size cap: least recently used blobs evicted in the background, never from under a client.

- With a small cap, pulling A, B, A again, C evicts B's blobs first; A stays warm; a cold re-pull
  of B works and, its tag record surviving, costs no counted pull.
- Eviction racing pulls: 8 clients downloading a cached blob keep it from eviction until they
  are done; 8 clients asking for a blob while its eviction is under way wait, then share one
  upstream download. Every client gets the whole blob, verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path

from support.fakehub import FakeHub, ImageInfo
from support.logwatch import watch_logs
from support.proxy_app import Client, ProxyFactory, downloads_settled
from support.waiting import wait_until

from proxy.cache.keys import blob_key
from proxy.config import CacheLimit
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest
from proxy.storage.filesystem import FilesystemStorage

KiB = 1024


def image_of(hub: FakeHub, name: str, layer_size: int) -> ImageInfo:
    rng = random.Random(name)
    layers = [rng.randbytes(layer_size), rng.randbytes(layer_size)]
    return hub.add_image(f"library/{name}", "latest", layers)


async def pull(client: Client, image: ImageInfo) -> None:
    """A full pull: the manifest by tag, then every blob, each checked against its digest."""
    response = await client.get(
        f"/v2/{image.repo}/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert response.status == 200, await response.text()
    manifest = json.loads(await response.read())
    for described in [manifest["config"], *manifest["layers"]]:
        blob = await client.get(f"/v2/{image.repo}/blobs/{described['digest']}")
        assert blob.status == 200
        body = await blob.read()
        assert "sha256:" + hashlib.sha256(body).hexdigest() == described["digest"]
    await downloads_settled(client)  # a pull is over once its blobs are stored


def cached(client: Client, image: ImageInfo) -> list[bool]:
    storage = client.app[SERVICES].storage.inner
    assert isinstance(storage, FilesystemStorage)
    return [
        (storage.data_dir / blob_key(Digest.parse(digest))).exists()
        for digest in image.blob_digests
    ]


async def test_lru_evicts_the_least_recently_pulled_image_first(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    a, b, c = (image_of(fakehub, name, 300 * KiB) for name in ("a", "b", "c"))
    # Room for two images, not three: C pushes the cache over, down to 90% of the cap.
    cap = 2 * a.blob_bytes + a.blob_bytes // 2
    client = await make_proxy(fakehub, limit=CacheLimit(max_bytes=cap))
    janitor = client.app[SERVICES].janitor
    await wait_until(lambda: janitor.estimated_bytes is not None, "the first inventory")

    await pull(client, a)
    await pull(client, b)
    await pull(client, a)  # A is used again: B is now the least recently used
    await pull(client, c)
    # The pass deletes the files before it drops them from its inventory (and counts them in
    # the metrics): wait for it to end, not only for the files to go.
    housekeeper = janitor.housekeeper
    await wait_until(
        lambda: not any(cached(client, b)) and not housekeeper.busy, "B's blobs are evicted"
    )
    assert all(cached(client, a)) and all(cached(client, c))
    assert janitor.estimated_bytes is not None and janitor.estimated_bytes <= cap
    status = (await (await client.get("/status")).json())["cache"]
    assert status["limit_bytes"] == cap
    assert status["bytes"] <= cap * 0.9
    assert status["entries"]["blob"] == 6 and status["entries"]["tag"] == 3
    text = await (await client.get("/metrics")).text()
    metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    assert float(metrics['registry_proxy_cache_evictions_total{kind="blob"}']) == 3
    assert float(metrics['registry_proxy_cache_evicted_bytes_total{kind="blob"}']) == b.blob_bytes
    assert float(metrics['registry_proxy_cache_entries{kind="blob"}']) == 6
    assert float(metrics["registry_proxy_cache_limit_bytes"]) == cap
    assert float(metrics['registry_proxy_cache_sweep_duration_seconds_count{operation="evict"}'])

    fakehub.reset_counts()
    await pull(client, a)
    assert fakehub.count(server=None) == 0  # A stayed warm: not one upstream request

    await pull(client, b)  # cold blobs, but the tag record and manifest survived
    assert fakehub.manifest_gets() == 0  # no counted pull
    assert fakehub.cdn_gets() == 3  # only B's blobs came from the upstream again


class GatedStorage(FilesystemStorage):
    """A directory whose deletes wait for ``gate`` (to hold an eviction half-way)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.gate.set()
        self.deleting = asyncio.Event()

    async def delete_many(self, keys: list[str]) -> None:
        self.deleting.set()
        await self.gate.wait()
        await super().delete_many(keys)


async def test_eviction_racing_eight_downloads(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    # Larger than what loopback's socket buffers hold: the server is still sending (sendfile)
    # while each client has read only its first 64 KiB.
    data = random.Random(8).randbytes(32 * 1024 * KiB)
    digest = fakehub.add_blob(data, repo="library/golang")
    storage = GatedStorage(tmp_path / "gated")
    # One request per download (no Range pieces), so "one upstream download" is one CDN GET.
    client = await make_proxy(fakehub, storage_backend=storage, fetch_pieces=1)
    services = client.app[SERVICES]
    housekeeper = services.janitor.housekeeper
    pins = housekeeper.pins
    assert pins is not None
    path = storage.data_dir / blob_key(Digest.parse(digest))
    url = f"/v2/library/golang/blobs/{digest}"
    assert await (await client.get(url)).read() == data  # cached now
    await wait_until(lambda: path.exists(), "the blob is stored")

    # 1. Eight clients in the middle of downloading it from the cache: eviction leaves it.
    go_on = asyncio.Event()
    started = [asyncio.Event() for _ in range(8)]

    async def slow_download(index: int) -> bytes:
        async with client.get(url) as response:
            assert response.status == 200
            received = await response.content.readexactly(64 * KiB)
            started[index].set()
            await go_on.wait()
            return received + await response.read()

    downloads = [asyncio.create_task(slow_download(i)) for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 30)
    report = await housekeeper.evict(make_room=True)  # the disk filled up: free what it can
    assert report.evicted == [] and report.held == 1
    assert path.exists()
    go_on.set()
    assert all(body == data for body in await asyncio.wait_for(asyncio.gather(*downloads), 30))
    await wait_until(lambda: pins.held == 0, "readers let go")
    report = await housekeeper.evict(make_room=True)
    assert [entry.key for entry in report.evicted] == [blob_key(Digest.parse(digest))]
    assert not path.exists()

    # 2. Eight clients asking while its eviction is half done: they wait, then share one
    #    upstream download; nobody gets a cache answer for a file about to vanish.
    assert await (await client.get(url)).read() == data
    await wait_until(lambda: path.exists(), "the blob is stored again")
    await wait_until(lambda: pins.held == 0, "readers let go")
    fakehub.reset_counts()
    storage.gate.clear()
    storage.deleting.clear()
    eviction = asyncio.create_task(housekeeper.evict(make_room=True))
    await asyncio.wait_for(storage.deleting.wait(), 10)

    async def download() -> bytes:
        async with client.get(url) as response:
            assert response.status == 200
            return await response.read()

    racing = [asyncio.create_task(download()) for _ in range(8)]
    await wait_until(lambda: pins.waiting == 8, "all eight wait for the eviction")
    storage.gate.set()
    assert len((await asyncio.wait_for(eviction, 10)).evicted) == 1
    bodies = await asyncio.wait_for(asyncio.gather(*racing), 30)
    assert all(hashlib.sha256(body).digest() == hashlib.sha256(data).digest() for body in bodies)
    assert all(body == data for body in bodies)
    assert fakehub.cdn_gets(digest) == 1  # one shared upstream download for all eight


async def test_a_blob_stays_held_until_its_last_reader_is_done(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Readers finish at different times: the first one done must not let go of the blob for
    the others (issue 21, mutation: a pin released when the first of several readers ends)."""
    data = random.Random(9).randbytes(32 * 1024 * KiB)  # more than loopback's socket buffers
    digest = fakehub.add_blob(data, repo="library/golang")
    storage = GatedStorage(tmp_path / "gated")
    client = await make_proxy(fakehub, storage_backend=storage, fetch_pieces=1)
    housekeeper = client.app[SERVICES].janitor.housekeeper
    pins = housekeeper.pins
    assert pins is not None
    path = storage.data_dir / blob_key(Digest.parse(digest))
    url = f"/v2/library/golang/blobs/{digest}"
    assert await (await client.get(url)).read() == data  # cached now
    await wait_until(lambda: path.exists() and pins.held == 0, "the blob is stored")

    gates = [asyncio.Event(), asyncio.Event()]
    started = [asyncio.Event(), asyncio.Event()]

    async def slow_download(index: int) -> bytes:
        async with client.get(url) as response:
            received = await response.content.readexactly(64 * KiB)
            started[index].set()
            await gates[index].wait()
            return received + await response.read()

    with watch_logs() as logs:
        downloads = [asyncio.create_task(slow_download(i)) for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 30)
        gates[0].set()
        assert await asyncio.wait_for(downloads[0], 30) == data
        await logs.wait_for(lambda e: e["event"] == "request")  # its handler let go
    report = await housekeeper.evict(make_room=True)
    assert report.evicted == [] and report.held == 1
    assert path.exists()
    gates[1].set()
    assert await asyncio.wait_for(downloads[1], 30) == data
    await wait_until(lambda: pins.held == 0, "the last reader let go")
    assert len((await housekeeper.evict(make_room=True)).evicted) == 1
