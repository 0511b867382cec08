"""Prefetch: an image manifest served starts its blobs' downloads, shared with the clients."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ProxyFactory
from support.fakehub import FakeHub, ImageInfo
from test_blob_cache import blob_path, cached_blobs

from proxy.http.routes import SERVICES
from proxy.registry.manifest import MANIFEST_TYPES, image_blobs
from proxy.registry.reference import Digest
from proxy.storage import StorageError
from proxy.upstream.errors import UpstreamRateLimited

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_TYPES)}
LAYERS = [bytes([n]) * (512 * 1024 + n) for n in range(1, 4)]

Client = TestClient[web.Request, web.Application]


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
    stall = fakehub.inject_pause_mid_blob(server="cdn")
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


async def test_a_head_by_digest_prefetches_only_a_cached_manifest(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", LAYERS)
    client = await make_proxy(fakehub, prefetch=True)
    services = client.app[SERVICES]
    path = f"/v2/library/golang/manifests/{image.digest}"
    # Not cached: the HEAD is answered from the upstream's HEAD; no GET (a counted pull) is spent
    # to learn the blobs.
    assert (await client.head(path, headers=ACCEPT_ALL)).status == 200
    await services.prefetch.wait_idle()
    assert pulls(fakehub) == 0 and fakehub.cdn_gets() == 0

    # Cached (fetched while prefetching was off): the HEAD starts the prefetch.
    services.prefetch.enabled = False
    await get_manifest(client, "1.22")
    services.prefetch.enabled = True
    assert fakehub.cdn_gets() == 0
    assert (await client.head(path, headers=ACCEPT_ALL)).status == 200
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
    held = fakehub.inject_slow_first_byte(path_contains=layer, server="registry", times=1)
    fakehub.inject_status(500, path_contains=layer, server="registry", times=1)
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
    stall = fakehub.inject_pause_mid_blob(server="cdn")
    await get_manifest(client, "1.22")
    await stall.wait_hit()
    # The config's download is stalled and holds the one prefetch slot; the layers wait.
    assert services.blobs.in_flight == 1
    assert services.prefetch.queued == len(image.blob_digests)
    # A client asking for a layer still queued for prefetch starts its download at once.
    fakehub.remove_fault(stall)  # (the stalled download stays stalled)
    last = image.layer_digests[-1]
    assert await asyncio.wait_for(get_blob(client, last), timeout=10) == LAYERS[-1]
    assert services.blobs.in_flight == 1
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


def test_image_blobs_lists_config_and_layers_once_with_their_sizes() -> None:
    config, layer = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    manifest = (
        b'{"config": {"digest": "%s", "size": 7}, "layers": [{"digest": "%s", "size": 9},'
        b' {"digest": "%s", "size": 9}, {"digest": "sha512:00", "size": 1}, {"size": 3},'
        b' {"digest": "%s", "size": "big"}]}'
    ) % (config.encode(), layer.encode(), layer.encode(), ("sha256:" + "c" * 64).encode())
    found = [(str(b.digest), b.size) for b in image_blobs(manifest)]
    assert found == [(config, 7), (layer, 9), ("sha256:" + "c" * 64, None)]
    assert image_blobs(b"not json") == []
    assert image_blobs(b'{"layers": "nope"}') == []
    assert Digest.parse(config).hex == "a" * 64
