"""A fake wall clock for the proxy's TTLs, so tests move time by hand instead of sleeping."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.http.routes import SERVICES
from proxy.upstream.backoff import Backoff


class Clock:
    """``clock()`` is ``clock.now``, which only the test moves."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def use_clock(client: TestClient[web.Request, web.Application]) -> Clock:
    """Drive tag and referrers TTLs, negative answers and every upstream's back-off from one
    fake clock."""
    clock = Clock()
    services = client.app[SERVICES]
    services.manifests.clock = clock
    services.referrers.clock = clock
    for upstream in services.upstreams:
        upstream.backoff = Backoff(clock=clock, wall_clock=clock)
    return clock
