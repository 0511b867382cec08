"""proxy/http/shutdown.py on its own: fetches and requests in progress share one deadline, and a
request counts as in flight until it finishes. SIGTERM to a real server:
tests/http/test_shutdown.py.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.http.access import AccessPolicy
from proxy.http.clientcap import ClientCap
from proxy.http.edge import Edge
from proxy.http.shutdown import InFlightRequests, drain


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
