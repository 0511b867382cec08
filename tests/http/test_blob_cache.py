"""Blobs through the proxy: verified caching, one shared upstream fetch, faults never cached."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest
from support.fakehub import FakeHub
from support.faulty_storage import FaultyStorage
from support.proxy_app import ProxyFactory, blob_path, cached_blobs, downloads_settled

from proxy.cache.keys import blob_key
from proxy.concurrency.waits import wait_at_most
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest

LAYER = bytes(range(256)) * 4096 * 3  # 3 MiB: several upstream chunks


async def test_miss_then_hit(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    response = await client.get(blob_path(digest))
    assert response.status == 200
    assert await response.read() == LAYER
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Content-Length"] == str(len(LAYER))
    assert fakehub.cdn_gets(digest) == 1
    assert fakehub.cdn_auth_violations == 0  # the registry's token never went to the CDN
    await downloads_settled(client)
    [stored] = cached_blobs(client)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest.split(":")[1]

    fakehub.reset_counts()
    again = await client.get(blob_path(digest))
    assert await again.read() == LAYER
    assert fakehub.count(server=None) == 0  # a cached digest never goes upstream


async def test_clients_get_their_last_byte_once_verified_while_the_blob_is_stored(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Storing a verified blob (a local file's fsync and rename, an S3 upload's completion)
    comes after the clients' last bytes: they wait for the digest to match, not for the
    storage. The blob is cached once the storing ends, and a client meanwhile is served from
    the download without going upstream again."""
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    storage = FaultyStorage(tmp_path / "gated")
    storage.commit_gate = asyncio.Event()
    client = await make_proxy(fakehub, storage_backend=storage)
    response = await client.get(blob_path(digest))
    body = asyncio.ensure_future(response.read())
    assert await wait_at_most(10, asyncio.shield(body)), "the response waited for the storing"
    assert body.result() == LAYER
    assert storage.committing.is_set()
    assert await storage.stat(blob_key(Digest.parse(digest))) is None  # not stored yet
    again = await client.get(blob_path(digest))
    assert await again.read() == LAYER
    storage.commit_gate.set()
    await downloads_settled(client)
    assert await storage.stat(blob_key(Digest.parse(digest))) is not None
    assert fakehub.cdn_gets(digest) == 1


async def test_head_does_not_download(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    head = await client.head(blob_path(digest))
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(LAYER))
    assert fakehub.blob_gets() == 0 and fakehub.cdn_gets() == 0
    await downloads_settled(client)
    assert cached_blobs(client) == []


@pytest.mark.parametrize("cached", [False, True])
async def test_range_requests(fakehub: FakeHub, make_proxy: ProxyFactory, cached: bool) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    if cached:
        await (await client.get(blob_path(digest))).read()
    part = await client.get(blob_path(digest), headers={"Range": "bytes=1000-299999"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 1000-299999/{len(LAYER)}"
    assert await part.read() == LAYER[1000:300000]
    tail = await client.get(blob_path(digest), headers={"Range": "bytes=-10"})
    assert await tail.read() == LAYER[-10:]
    beyond = await client.get(blob_path(digest), headers={"Range": f"bytes={len(LAYER)}-"})
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(LAYER)}"


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize(
    "start", ["99999999999999999999", "18446744073709551616", "9" * 5000, str(len(LAYER))]
)
async def test_a_range_starting_beyond_the_blob_is_416_whatever_its_digits(
    fakehub: FakeHub, make_proxy: ProxyFactory, cached: bool, start: str
) -> None:
    """Never the whole blob with 200: a client asking from an offset would take it as that."""
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    if cached:
        await (await client.get(blob_path(digest))).read()
    response = await client.get(blob_path(digest), headers={"Range": f"bytes={start}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(LAYER)}"
    assert len(await response.read()) < 1000  # an error body, not the blob


async def test_concurrent_misses_share_one_streaming_fetch(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    # The upstream sends the first MiB, then stalls until released.
    fault = fakehub.inject(
        "pause_mid_blob", path_contains=digest, after_bytes=1024 * 1024, server="cdn"
    )
    first_bytes = [asyncio.Event() for _ in range(8)]

    async def pull(index: int) -> bytes:
        async with client.get(blob_path(digest)) as response:
            assert response.status == 200
            received = bytearray()
            async for chunk in response.content.iter_any():
                received += chunk
                first_bytes[index].set()
            return bytes(received)

    pulls = [asyncio.create_task(pull(i)) for i in range(8)]
    # Every client has bytes while the upstream is still stalled mid-blob: they follow the
    # in-flight stream instead of waiting for the whole blob.
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_bytes)), timeout=10)
    assert not any(p.done() for p in pulls)
    fault.release()
    results = await asyncio.wait_for(asyncio.gather(*pulls), timeout=30)
    assert all(r == LAYER for r in results)
    assert fakehub.cdn_gets(digest) == 1
    # One redirected GET at the registry (its 401 token challenge aside).
    assert fakehub.count("GET", kind="blob", status=307) == 1


async def test_slow_client_does_not_hold_back_others(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    async with client.get(blob_path(digest)) as stalled:
        await stalled.content.readexactly(1024)  # then stop reading
        fast = await client.get(blob_path(digest))
        assert await asyncio.wait_for(fast.read(), timeout=20) == LAYER
    assert fakehub.cdn_gets(digest) == 1


@pytest.mark.parametrize("fault", ["drop", "wrong_bytes"])
async def test_broken_upstream_is_never_cached_and_client_sees_failure(
    fakehub: FakeHub, make_proxy: ProxyFactory, fault: str
) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    if fault == "drop":
        fakehub.inject(
            "drop_mid_blob",
            path_contains=digest,
            after_bytes=2 * 1024 * 1024,
            times=1,
            server="cdn",
        )
    else:
        fakehub.inject("wrong_bytes", path_contains=digest, times=1, server="cdn")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(blob_path(digest)) as response:
            assert response.status == 200  # headers were sent before the failure showed
            await response.read()
    await downloads_settled(client)
    assert cached_blobs(client) == []
    # Nothing half-written was left for the next request: it fetches again, correctly.
    response = await client.get(blob_path(digest))
    assert await response.read() == LAYER
    assert fakehub.cdn_gets(digest) == 2
    await downloads_settled(client)
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == LAYER


async def test_ranged_reader_of_a_bad_fetch_does_not_complete(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    fakehub.inject("wrong_bytes", path_contains=digest, times=1, server="cdn")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(blob_path(digest), headers={"Range": "bytes=0-99"}) as response:
            await response.read()


async def test_upstream_errors_before_any_byte(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    fakehub.inject("status", status=429, retry_after=42, path_contains="/blobs/", times=1)
    limited = await client.get(blob_path(digest))
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "42"
    assert (await limited.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    fakehub.inject("status", status=500, path_contains="/blobs/", times=1)
    failed = await client.get(blob_path(digest))
    assert failed.status == 503
    assert (await failed.json())["errors"][0]["code"] == "UNAVAILABLE"
    await downloads_settled(client)
    assert cached_blobs(client) == []


async def test_client_disconnect_does_not_stop_the_fetch(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    async with client.get(blob_path(digest)) as response:
        await response.content.readexactly(100)
    # The download goes on for the cache; wait for it to land.
    blobs = client.app[SERVICES].blobs
    for _ in range(500):
        await downloads_settled(client)
        if blobs.in_flight == 0 and cached_blobs(client):
            break
        await asyncio.sleep(0.01)
    await downloads_settled(client)
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == LAYER
    assert fakehub.cdn_gets(digest) == 1


async def test_upstream_not_listening_gives_503(tmp_path: Path, make_proxy: ProxyFactory) -> None:
    hub = FakeHub()
    await hub.start()
    url = hub.url
    digest = hub.add_blob(b"x", repo="library/golang")
    await hub.close()
    client = await make_proxy(hub)
    assert client.app[SERVICES].upstreams.default.settings.url == url
    response = await client.get(blob_path(digest))
    assert response.status == 503
    assert (await response.json())["errors"][0]["code"] == "UNAVAILABLE"
