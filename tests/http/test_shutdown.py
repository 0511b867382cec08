"""SIGTERM drains: stop accepting, finish transfers within the grace period, abort the rest."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from support.fakehub import FakeHub
from support.proxy_process import ProxyProcess

from proxy.http.access import AccessPolicy
from proxy.http.clientcap import ClientCap
from proxy.http.edge import Edge
from proxy.http.shutdown import InFlightRequests, drain

LAYER = bytes(range(256)) * 4096 * 4  # 4 MiB


def cache_files(root: Path, area: str) -> list[Path]:
    """The files of one area (not the spool's marker, which stays)."""
    return [p for p in (root / area).rglob("*") if p.is_file() and p.name != ".registry-proxy"]


async def wait_exit(proxy: ProxyProcess, seconds: float) -> int:
    """Wait for the process to exit by itself (no second signal) and return its exit code."""
    process = proxy.process
    assert process is not None
    return await asyncio.to_thread(process.wait, seconds)


async def start_transfer(
    session: aiohttp.ClientSession, proxy: ProxyProcess, digest: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    response = await session.get(f"{proxy.url}/v2/library/golang/blobs/{digest}")
    assert response.status == 200
    first = await response.content.readexactly(64 * 1024)
    return response, first


async def test_sigterm_lets_a_transfer_finish(fakehub: FakeHub, tmp_path: Path) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    gate = fakehub.inject(
        "pause_mid_blob", path_contains=digest, after_bytes=1024 * 1024, server="cdn"
    )
    proxy = ProxyProcess(tmp_path, fakehub.url, extra_env={"PROXY_SHUTDOWN_GRACE": "20"})
    await asyncio.to_thread(proxy.start)
    try:
        async with aiohttp.ClientSession() as session:
            response, first = await start_transfer(session, proxy, digest)
            assert proxy.pid is not None
            proxy.send_signal(signal.SIGTERM)
            # New connections are refused while the transfer in progress goes on.
            for _ in range(200):
                if proxy.healthz(timeout=1) is None:
                    break
                await asyncio.sleep(0.02)
            assert proxy.healthz(timeout=1) is None
            gate.release()
            rest = await asyncio.wait_for(response.read(), timeout=20)
            assert first + rest == LAYER
        assert await wait_exit(proxy, 20) == 0
    finally:
        gate.release()
        await asyncio.to_thread(proxy.stop)
    # The blob finished during the drain, so it is in the cache; nothing temporary is left.
    [stored] = cache_files(tmp_path / "cache", "data/blobs")
    assert stored.read_bytes() == LAYER
    assert cache_files(tmp_path / "cache", "tmp") == []


async def test_sigterm_aborts_what_cannot_finish(fakehub: FakeHub, tmp_path: Path) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    gate = fakehub.inject(
        "pause_mid_blob", path_contains=digest, after_bytes=1024 * 1024, server="cdn"
    )
    proxy = ProxyProcess(tmp_path, fakehub.url, extra_env={"PROXY_SHUTDOWN_GRACE": "0.5"})
    await asyncio.to_thread(proxy.start)
    try:
        async with aiohttp.ClientSession() as session:
            response, _ = await start_transfer(session, proxy, digest)
            proxy.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), timeout=20)
        assert await wait_exit(proxy, 20) == 0
    finally:
        gate.release()
        await asyncio.to_thread(proxy.stop)
    assert cache_files(tmp_path / "cache", "data/blobs") == []
    assert cache_files(tmp_path / "cache", "tmp") == []
    assert cache_files(tmp_path / "cache", "spool") == []


class SlowFetches:
    """A blob cache whose downloads take ``seconds`` to drain; records the grace it was given."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.given: list[float] = []

    @property
    def in_flight(self) -> int:
        return 1

    async def drain(self, grace: float) -> None:
        self.given.append(grace)
        await asyncio.sleep(min(self.seconds, grace))


class RecordingRequests(InFlightRequests):
    def __init__(self) -> None:
        super().__init__()
        self.given: list[float] = []

    async def wait_idle(self, seconds: float) -> bool:
        self.given.append(seconds)
        return await super().wait_idle(seconds)


async def test_fetches_and_requests_share_one_deadline() -> None:
    """The requests get what the fetches left of the grace, not a grace of their own."""
    fetches = SlowFetches(0.2)
    requests = RecordingRequests()
    requests.count = 1  # a request that never finishes
    requests._idle.clear()
    await drain(1.0, fetches, requests)
    assert fetches.given == [pytest.approx(1.0, abs=0.05)]
    [left] = requests.given
    assert left <= 0.8


async def test_in_flight_requests_are_counted_until_they_finish() -> None:
    requests = InFlightRequests()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    edge = Edge(AccessPolicy(), ClientCap(10), requests)
    call = asyncio.create_task(edge.route("test", handler)(make_mocked_request("GET", "/v2/")))
    await asyncio.sleep(0)
    assert requests.count == 1
    assert await requests.wait_idle(0) is False
    release.set()
    await call
    assert requests.count == 0
    assert await requests.wait_idle(0) is True
