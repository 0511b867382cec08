"""PROXY_MAX_CLIENTS: requests beyond the cap get a clean 503, probes still answer, and the
proxy serves again as soon as clients leave."""

from __future__ import annotations

import asyncio
import os

from support.fakehub import FakeHub
from support.logwatch import watch_logs
from support.proxy_app import ProxyFactory, blob_path
from support.waiting import wait_until

from proxy.http.clientcap import CLIENT_CAP
from proxy.http.routes import SERVICES

# Bigger than the loopback buffers: a client that stops reading holds its transfer open.
BIG_LAYER = os.urandom(48 * 1024 * 1024)


async def test_beyond_the_cap_clients_get_503_and_the_proxy_recovers(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    digest = fakehub.add_blob(BIG_LAYER, repo="library/golang")
    client = await make_proxy(fakehub, max_clients=2)
    assert await (await client.get(blob_path(digest))).read() == BIG_LAYER  # cached now
    cap = client.app[CLIENT_CAP]
    await wait_until(lambda: client.app[SERVICES].blobs.in_flight == 0, "the download")

    # Two clients ask for the blob and stop reading: their transfers stay in progress.
    held = [await client.get(blob_path(digest)) for _ in range(2)]
    assert [r.status for r in held] == [200, 200]
    assert cap.active == 2

    refused = await client.get(blob_path(digest))
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    body = await refused.json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert "PROXY_MAX_CLIENTS" in body["errors"][0]["detail"]
    assert (await client.get("/v2/library/golang/manifests/x")).status == 503
    # Probes are never refused: a busy instance is not a dead one.
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/metrics")).status == 200
    assert cap.refused == 2

    for response in held:
        response.close()  # the clients leave mid-transfer
    await wait_until(lambda: cap.active == 0, "the held transfers to end")
    again = await client.get(blob_path(digest))
    assert again.status == 200
    assert await again.read() == BIG_LAYER


async def test_finished_requests_free_their_place(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, max_clients=1)
    for _ in range(5):  # one at a time: never refused
        response = await client.get("/v2/golang/manifests/1.22")
        assert response.status == 200
        await response.read()
    failed = await client.get("/v2/no-such/manifests/x")
    assert failed.status == 404  # an error response frees its place too
    assert (await client.get("/v2/")).status == 200
    assert client.app[CLIENT_CAP].active == 0


async def test_clients_that_stop_reading_are_closed_and_free_their_place(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """The issue's run: PROXY_MAX_CLIENTS=50 and 60 clients that ask for a cached blob and read
    nothing. Past PROXY_CLIENT_IDLE_TIMEOUT without a byte taken, their connections are closed
    and every place is free again; each is logged with why it was cut off."""
    digest = fakehub.add_blob(BIG_LAYER, repo="library/golang")
    client = await make_proxy(fakehub, max_clients=50, client_idle_timeout=1.0)
    assert await (await client.get(blob_path(digest))).read() == BIG_LAYER  # cached now
    cap = client.app[CLIENT_CAP]
    await wait_until(lambda: client.app[SERVICES].blobs.in_flight == 0, "the download")

    with watch_logs() as logs:
        stalled = await asyncio.gather(*(client.get(blob_path(digest)) for _ in range(60)))
        assert sorted(r.status for r in stalled) == [200] * 50 + [503] * 10
        await wait_until(lambda: cap.active == 0, "the stalled clients to be cut off")
        lines = [e for e in logs.events if e.get("event") == "request" and e["status"] == 499]
    assert len(lines) == 50
    assert all("read nothing for 1 s" in str(line["aborted"]) for line in lines)
    again = await client.get(blob_path(digest))
    assert again.status == 200
    assert await again.read() == BIG_LAYER
    for response in stalled:
        response.close()


async def test_a_stalled_reader_holds_neither_the_download_nor_other_clients(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """While a blob is still downloading: one client reads nothing, another reads it all; the
    download ends and is cached, and the reader gets every byte, whatever the stalled one does."""
    digest = fakehub.add_blob(BIG_LAYER, repo="library/golang")
    client = await make_proxy(fakehub, client_idle_timeout=300.0, fetch_pieces=1)
    paused = fakehub.inject(
        "pause_mid_blob", path_contains=digest, after_bytes=1_000_000, server="cdn"
    )
    stalled = await client.get(blob_path(digest))  # headers only: it reads nothing after them
    await paused.wait_hit()
    reader = asyncio.create_task(client.get(blob_path(digest)))
    paused.release()
    response = await reader
    assert await response.read() == BIG_LAYER
    await wait_until(lambda: client.app[SERVICES].blobs.in_flight == 0, "the download to end")
    assert fakehub.cdn_gets(digest) == 1
    cached = await client.get(blob_path(digest))
    assert await cached.read() == BIG_LAYER
    stalled.close()


async def test_a_client_that_stops_reading_a_download_in_flight_is_cut_off(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """The same for a blob still coming from the upstream (read from the spool, written
    through the response's buffer instead of sendfile)."""
    digest = fakehub.add_blob(BIG_LAYER, repo="library/golang")
    client = await make_proxy(fakehub, client_idle_timeout=1.0, fetch_pieces=1)
    cap = client.app[CLIENT_CAP]
    with watch_logs() as logs:
        stalled = await client.get(blob_path(digest))
        assert stalled.status == 200
        await wait_until(lambda: cap.active == 0, "the stalled client to be cut off")
        line = await logs.wait_for(lambda e: e.get("event") == "request" and e["status"] == 499)
    assert "read nothing" in str(line["aborted"])
    await wait_until(lambda: client.app[SERVICES].blobs.in_flight == 0, "the download to end")
    assert await (await client.get(blob_path(digest))).read() == BIG_LAYER
    stalled.close()
