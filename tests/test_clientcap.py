"""PROXY_MAX_CLIENTS: requests beyond the cap get a clean 503, probes still answer, and the
proxy serves again as soon as clients leave."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from conftest import ProxyFactory
from support.fakehub import FakeHub

from proxy.http.clientcap import CLIENT_CAP, ClientCap
from proxy.http.routes import SERVICES

# Bigger than the loopback buffers: a client that stops reading holds its transfer open.
BIG_LAYER = os.urandom(48 * 1024 * 1024)


def blob_path(digest: str) -> str:
    return f"/v2/library/golang/blobs/{digest}"


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):  # 10 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"waited 10 s for {what}")


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


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ClientCap(0)
