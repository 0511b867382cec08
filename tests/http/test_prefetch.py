"""Prefetch: an image manifest served starts its blobs' downloads, shared with the clients."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from support.fakehub import FakeHub, ImageInfo
from support.proxy_app import (
    ACCEPT_ALL,
    Client,
    ProxyFactory,
    blob_path,
    cached_blobs,
    downloads_settled,
)
from support.waiting import wait_until

from proxy.cache.keys import blob_key
from proxy.config import CacheLimit
from proxy.http.routes import SERVICES
from proxy.registry.manifest import BlobDescriptor, image_blobs
from proxy.registry.reference import Digest
from proxy.storage import ObjectInfo, StorageError
from proxy.storage.filesystem import FilesystemStorage
from proxy.upstream.errors import UpstreamRateLimited

LAYERS = [bytes([n]) * (512 * 1024 + n) for n in range(1, 4)]
MiB = 1024 * 1024


def counter(client: Client, name: str) -> float:
    value = client.app[SERVICES].metrics.registry.get_sample_value(f"registry_proxy_{name}_total")
    return value or 0.0


def pulls(hub: FakeHub) -> int:
    """Counted manifest GETs (not their 401 token challenges)."""
    return hub.count("GET", kind="manifest", status=200)


async def get_manifest(client: Client, reference: str) -> None:
    response = await client.get(f"/v2/library/golang/manifests/{reference}", headers=ACCEPT_ALL)
    assert response.status == 200, await response.text()
    await response.read()


async def get_blob(client: Client, digest: str, streaming: asyncio.Event | None = None) -> bytes:
    """The blob's bytes; ``streaming`` is set once the first of them arrived."""
    async with client.get(blob_path(digest)) as response:
        assert response.status == 200, await response.text()
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if streaming is not None:
                streaming.set()
        return bytes(body)


def blobs_of(image: ImageInfo) -> dict[str, bytes]:
    return dict(zip(image.blob_digests, (image.config, *image.layers), strict=True))


async def test_one_manifest_get_fetches_every_blob_once_even_with_concurrent_clients(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    # Every blob's download stalls half-way until released: the clients below arrive while
    # the prefetches are in flight and must follow them, not start their own.
    stall = fakehub.inject("pause_mid_blob", server="cdn")
    await get_manifest(client, "1.22")
    await stall.wait_hit(len(image.blob_digests))

    # Three clients ask for every blob at once; each request gets its first bytes from the
    # stalled downloads before they are let go.
    streaming = [[asyncio.Event() for _ in image.blob_digests] for _ in range(3)]

    async def client_pulls_everything(events: list[asyncio.Event]) -> dict[str, bytes]:
        bodies = await asyncio.gather(
            *(get_blob(client, d, e) for d, e in zip(image.blob_digests, events, strict=True))
        )
        return dict(zip(image.blob_digests, bodies, strict=True))

    clients = [asyncio.create_task(client_pulls_everything(events)) for events in streaming]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for row in streaming for e in row)), 10)
    stall.release()
    results = await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
    assert all(result == blobs_of(image) for result in results)

    assert pulls(fakehub) == 1  # no manifest GET beyond the client's
    for digest in image.blob_digests:
        assert fakehub.cdn_gets(digest) == 1, digest
    assert fakehub.count("GET", kind="blob", status=307) == len(image.blob_digests)
    await client.app[SERVICES].prefetch.wait_idle()
    assert counter(client, "prefetched_blobs") == len(image.blob_digests)
    assert counter(client, "prefetched_bytes") == image.blob_bytes
    assert counter(client, "prefetch_hits") == len(image.blob_digests)  # once per blob
    await downloads_settled(client)
    assert len(cached_blobs(client)) == len(image.blob_digests)


async def test_a_blob_already_prefetched_is_a_hit_with_no_upstream_request(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    await get_manifest(client, "1.22")
    await client.app[SERVICES].prefetch.wait_idle()
    fakehub.reset_counts()
    for digest, data in blobs_of(image).items():
        assert await get_blob(client, digest) == data
        assert await get_blob(client, digest) == data
    assert fakehub.count(server=None) == 0
    assert counter(client, "prefetch_hits") == len(image.blob_digests)


async def test_a_popular_image_costs_no_storage_lookups_per_pull(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Blobs found cached (or prefetched) lately are not looked up again on every pull."""
    fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    services = client.app[SERVICES]
    await get_manifest(client, "1.22")
    await services.prefetch.wait_idle()
    assert fakehub.cdn_gets() == len(LAYERS) + 1
    for _ in range(3):
        await get_manifest(client, "1.22")
        assert services.prefetch.queued == 0  # nothing queued, so nothing asked of storage


async def test_prefetch_off_fetches_only_what_is_asked_for(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=False)
    await get_manifest(client, "1.22")
    await get_manifest(client, image.digest)
    services = client.app[SERVICES]
    assert services.prefetch.queued == 0 and services.blobs.in_flight == 0
    assert await get_blob(client, image.layer_digests[1]) == LAYERS[1]
    await services.prefetch.wait_idle()
    assert fakehub.cdn_gets() == 1
    assert counter(client, "prefetched_blobs") == 0


async def test_an_index_prefetches_nothing_until_a_platform_manifest_is_asked_for(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    index = fakehub.add_multiarch_image("library/golang", "1.22")
    amd64, arm64 = index.images
    client = await make_proxy(fakehub, prefetch=True)
    services = client.app[SERVICES]
    await get_manifest(client, "1.22")
    assert services.prefetch.queued == 0 and services.blobs.in_flight == 0
    await get_manifest(client, amd64.digest)
    await services.prefetch.wait_idle()
    assert {d: fakehub.cdn_gets(d) for d in amd64.blob_digests} == dict.fromkeys(
        amd64.blob_digests, 1
    )
    assert sum(fakehub.cdn_gets(d) for d in arm64.blob_digests) == 0
    assert pulls(fakehub) == 2  # the index and the amd64 manifest: what the client asked for


async def test_a_head_by_digest_prefetches_nothing(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """A HEAD reads nothing: it must not make the proxy download a whole image (issue 21,
    item 9), cached manifest or not. The GET that follows it starts the prefetch."""
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    services = client.app[SERVICES]
    path = f"/v2/library/golang/manifests/{image.digest}"
    assert (await client.head(path, headers=ACCEPT_ALL)).status == 200
    services.prefetch.enabled = False
    await get_manifest(client, "1.22")  # cached now (fetched while prefetching was off)
    services.prefetch.enabled = True
    assert (await client.head(path, headers=ACCEPT_ALL)).status == 200
    await services.prefetch.wait_idle()
    assert fakehub.cdn_gets() == 0 and services.blobs.in_flight == 0
    await get_manifest(client, image.digest)
    await services.prefetch.wait_idle()
    assert all(fakehub.cdn_gets(d) == 1 for d in image.blob_digests)
    assert pulls(fakehub) == 1


async def test_a_head_by_tag_prefetches_nothing(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    """A HEAD by tag is often only a look for a new digest (the client may have the image)."""
    fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    response = await client.head("/v2/library/golang/manifests/1.22", headers=ACCEPT_ALL)
    assert response.status == 200
    await client.app[SERVICES].prefetch.wait_idle()
    assert fakehub.cdn_gets() == 0


async def test_a_failed_prefetch_is_only_logged_and_the_client_fetches_on_its_own(
    fakehub: FakeHub, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    metrics = client.app[SERVICES].metrics
    joined = asyncio.Event()  # set when a client's request finds the prefetch in flight
    count_hit = metrics.prefetch_hit

    def hit() -> None:
        count_hit()
        joined.set()

    monkeypatch.setattr(metrics, "prefetch_hit", hit)
    layer = image.layer_digests[0]
    # The prefetch's request is held, then fails; the client asks meanwhile and joins it.
    held = fakehub.inject("slow_first_byte", path_contains=layer, server="registry", times=1)
    fakehub.inject("status", status=500, path_contains=layer, server="registry", times=1)
    await get_manifest(client, "1.22")
    await held.wait_hit()
    pull = asyncio.create_task(get_blob(client, layer))
    await asyncio.wait_for(joined.wait(), timeout=5)
    held.release()
    assert await asyncio.wait_for(pull, timeout=10) == LAYERS[0]
    await client.app[SERVICES].prefetch.wait_idle()
    assert counter(client, "prefetch_failures") == 1
    assert counter(client, "prefetched_blobs") == len(image.blob_digests) - 1
    assert fakehub.cdn_gets(layer) == 1


async def test_prefetches_obey_their_cap_and_a_client_does_not_wait_behind_them(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    # 4 fetch slots: prefetches get one of them.
    client = await make_proxy(fakehub, prefetch=True, max_fetches=4)
    services = client.app[SERVICES]
    stall = fakehub.inject("pause_mid_blob", server="cdn")
    await get_manifest(client, "1.22")
    await stall.wait_hit()
    # The config's download is stalled and holds the one prefetch slot; the layers wait.
    assert services.blobs.in_flight == 1
    assert services.prefetch.queued == len(image.blob_digests)
    # A client asking for a layer still queued for prefetch starts its download at once.
    fakehub.remove_fault(stall)  # (the stalled download stays stalled)
    last = image.layer_digests[-1]
    assert await asyncio.wait_for(get_blob(client, last), timeout=10) == LAYERS[-1]
    # Its download is stored after the client's last byte; then only the stalled one is left.
    await wait_until(lambda: services.blobs.in_flight == 1, "the client's download to end")
    stall.release()
    await services.prefetch.wait_idle()
    assert all(fakehub.cdn_gets(d) == 1 for d in image.blob_digests)
    assert counter(client, "prefetched_blobs") == len(image.blob_digests) - 1


async def test_nothing_is_prefetched_while_the_cache_storage_fails(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """A blob that cannot be kept would only be downloaded again when the client asks."""
    fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    services = client.app[SERVICES]
    services.storage.record(StorageError("disk gone"), "stat")  # opens the circuit breaker
    assert services.storage.is_open
    await get_manifest(client, "1.22")
    await services.prefetch.wait_idle()
    assert fakehub.cdn_gets() == 0


async def test_nothing_is_prefetched_while_the_upstream_is_in_back_off(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=False)
    await get_manifest(client, image.digest)  # cached, its blobs not
    services = client.app[SERVICES]
    services.prefetch.enabled = True
    services.upstreams.default.backoff.record(
        UpstreamRateLimited("429", retry_after="60"), "library/golang"
    )
    await get_manifest(client, image.digest)
    await services.prefetch.wait_idle()
    assert fakehub.cdn_gets() == 0


async def test_a_queued_prefetch_asks_nothing_once_the_upstream_said_429(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Back-off is checked again just before each queued prefetch goes upstream, not only when
    the manifest was served (issue 21: 4 CDN GETs instead of 1 with one slot)."""
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    other = fakehub.add_image("library/golang", "1.23")
    client = await make_proxy(fakehub, prefetch=True, max_fetches=4)  # one prefetch slot
    services = client.app[SERVICES]
    stall = fakehub.inject("pause_mid_blob", server="cdn", times=1)
    await get_manifest(client, "1.22")
    await stall.wait_hit()
    assert services.prefetch.queued == len(image.blob_digests)
    # The upstream says 429 to a client's request meanwhile.
    fakehub.inject("status", status=429, path_contains="/manifests/1.23", times=1)
    refused = await client.get("/v2/library/golang/manifests/1.23", headers=ACCEPT_ALL)
    assert refused.status == 429 and other.tag == "1.23"
    stall.release()
    await services.prefetch.wait_idle()
    assert fakehub.cdn_gets() == 1  # only the download already under way
    assert counter(client, "prefetched_blobs") == 1


class FirstStatWaits(FilesystemStorage):
    """A directory whose first stat of ``key`` waits for ``gate`` (a slow storage lookup)."""

    def __init__(self, root: Path, key: str) -> None:
        super().__init__(root)
        self.key = key
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    async def stat(self, key: str) -> ObjectInfo | None:
        if key == self.key and not self.held.is_set():
            self.held.set()
            await self.gate.wait()
        return await super().stat(key)


async def test_a_client_starting_the_download_while_the_prefetch_looks_in_storage_wins(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A prefetch looks again for a download in flight after its storage lookup (issue 21,
    mutation: without that re-check, two upstream GETs of one blob)."""
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    layer = image.layer_digests[0]
    storage = FirstStatWaits(tmp_path / "slow", blob_key(Digest.parse(layer)))
    client = await make_proxy(fakehub, storage_backend=storage, prefetch=True)
    await get_manifest(client, "1.22")
    await asyncio.wait_for(storage.held.wait(), 10)  # the layer's prefetch is in its lookup
    # A client asks meanwhile; its download is held half-way until the prefetch has decided.
    paused = fakehub.inject("pause_mid_blob", path_contains=layer, server="cdn", times=1)
    pull = asyncio.create_task(get_blob(client, layer))
    await paused.wait_hit()
    storage.gate.set()
    prefetch = client.app[SERVICES].prefetch
    # Every prefetch decided: the layer's found the client's download (or, wrongly, started
    # one of its own, which nothing holds); the others' downloads ended.
    await asyncio.wait_for(prefetch.wait_idle(), 10)
    paused.release()
    assert await asyncio.wait_for(pull, 10) == LAYERS[0]
    assert fakehub.cdn_gets(layer) == 1


# --- bounded by the cache's limit (issue 21, item 9) ----------------------------------------------

KiB = 1024


def image_with(hub: FakeHub, repo: str, sizes: list[int]) -> ImageInfo:
    rng = random.Random(repo)
    return hub.add_image(repo, "1", [rng.randbytes(size) for size in sizes])


async def pull_everything(client: Client, image: ImageInfo) -> None:
    response = await client.get(f"/v2/{image.repo}/manifests/1", headers=ACCEPT_ALL)
    assert response.status == 200
    for digest, data in blobs_of(image).items():
        async with client.get(f"/v2/{image.repo}/blobs/{digest}") as blob:
            assert await blob.read() == data
    await downloads_settled(client)  # a pull is over once its blobs are stored


async def settled(client: Client) -> None:
    """Prefetches done and the cache's size known (no housekeeping pass under way)."""
    services = client.app[SERVICES]
    await services.prefetch.wait_idle()
    janitor = services.janitor
    await cache_quiet(lambda: janitor.estimated_bytes is not None and not janitor.housekeeper.busy)


async def cache_quiet(condition: Callable[[], bool]) -> None:
    """Poll an event-loop condition, bounded (the janitor works in the background)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting for the cache to settle")


async def test_prefetch_never_evicts_what_clients_used(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Under a small cap, a GET of a big image's manifest by digest used to download the whole
    image and evict everything clients had pulled: now it prefetches only into the room below
    the cap, and at most a share of it."""
    alpine = image_with(fakehub, "library/alpine", [200 * KiB, 200 * KiB])
    big = image_with(fakehub, "library/big", [512 * KiB, 512 * KiB, 512 * KiB])
    client = await make_proxy(fakehub, prefetch=True, limit=CacheLimit(max_bytes=1536 * KiB))
    services = client.app[SERVICES]
    services.prefetch.enabled = False
    await pull_everything(client, alpine)
    await settled(client)
    services.prefetch.enabled = True
    fakehub.reset_counts()
    await get_manifest_of(client, big)
    await settled(client)
    assert all(fakehub.cdn_gets(d) == 0 for d in big.layer_digests)  # no room for them
    await downloads_settled(client)
    assert len(cached_blobs(client)) == len(alpine.blob_digests) + 1  # the config only
    # Nothing clients used was evicted; the layers come when the client asks, as without
    # prefetch.
    fakehub.reset_counts()
    await pull_everything(client, alpine)
    assert fakehub.cdn_gets() == 0
    assert counter(client, "prefetch_skipped") == len(big.layer_digests)


async def test_prefetch_takes_at_most_a_share_of_the_cap(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Room enough for the whole image, but prefetched bytes no client asked for yet stay
    within a tenth of the cap."""
    big = image_with(fakehub, "library/big", [400 * KiB] * 4)
    client = await make_proxy(fakehub, prefetch=True, limit=CacheLimit(max_bytes=10 * MiB))
    await settled(client)
    await get_manifest_of(client, big)
    await settled(client)
    prefetched = sum(fakehub.cdn_gets(d) for d in big.layer_digests)
    assert prefetched == 2  # 2 x 400 KiB (and the config) within 1 MiB; 3 would not be
    # What was not prefetched comes when the client asks.
    await pull_everything(client, big)
    assert all(fakehub.cdn_gets(d) == 1 for d in big.blob_digests)


async def test_a_blob_larger_than_a_quarter_of_the_cap_is_streamed_not_cached(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Caching it would evict most of the cache, and then itself (7.9 GB evicted in 2 minutes
    in one run): clients get it whole and verified from the upstream each time, counted."""
    data = random.Random(9).randbytes(600 * KiB)
    digest = fakehub.add_blob(data, repo="library/golang")
    kept = fakehub.add_blob(b"small and cached" * 1000, repo="library/golang")
    client = await make_proxy(fakehub, limit=CacheLimit(max_bytes=2 * MiB))
    await settled(client)
    for _ in range(2):
        assert await get_blob(client, digest) == data
    assert await get_blob(client, kept) == b"small and cached" * 1000
    await downloads_settled(client)
    assert [p.name for p in cached_blobs(client)] == [kept.removeprefix("sha256:")]
    assert fakehub.cdn_gets(digest) == 2
    assert counter(client, "blobs_too_large") == 2


async def get_manifest_of(client: Client, image: ImageInfo) -> None:
    response = await client.get(f"/v2/{image.repo}/manifests/{image.digest}", headers=ACCEPT_ALL)
    assert response.status == 200
    await response.read()


async def test_a_prefetched_blob_is_speculative_until_a_client_asks(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Brought in by a prefetch, a blob was never used: it counts against prefetching's share and
    goes first when the cache must evict, until a client is served it."""
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    services = client.app[SERVICES]
    pins = services.janitor.housekeeper.pins
    assert pins is not None
    await get_manifest(client, "1.22")
    await services.prefetch.wait_idle()
    hexes = [Digest.parse(d).hex for d in image.blob_digests]
    assert all(pins.is_speculative(h) for h in hexes)
    assert pins.speculative_bytes == image.blob_bytes
    await get_blob(client, image.layer_digests[0])
    assert not pins.is_speculative(hexes[1])
    assert pins.speculative_bytes == image.blob_bytes - len(LAYERS[0])
    # Not a use either: only the client's request recorded one.
    pending = services.janitor.last_use.pending
    assert [k for k in pending if k.startswith("blobs/")] == [
        blob_key(Digest.parse(image.layer_digests[0]))
    ]


async def test_a_warm_manifest_served_again_is_not_looked_at_again(
    fakehub: FakeHub, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once every blob of an image was found or brought in, serving its manifest again (a GET
    or a HEAD by digest, as every warm pull does) parses nothing and starts no task: this was
    why requests by digest were slower than by tag."""
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    prefetcher = client.app[SERVICES].prefetch
    await get_manifest(client, image.digest)
    await prefetcher.wait_idle()
    await get_manifest(client, image.digest)  # every blob is recent now: the manifest is noted
    await prefetcher.wait_idle()

    looked: list[bytes] = []

    def spy(data: bytes) -> list[BlobDescriptor]:
        looked.append(data)
        return image_blobs(data)

    monkeypatch.setattr("proxy.cache.prefetch.image_blobs", spy)
    for _ in range(3):
        await get_manifest(client, image.digest)
        head = await client.head(f"/v2/library/golang/manifests/{image.digest}")
        assert head.status == 200
    assert looked == []
    assert not prefetcher._tasks
