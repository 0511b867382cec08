"""Stopping on SIGTERM within one deadline: ``PROXY_SHUTDOWN_GRACE`` seconds from the signal.

ECS (and Docker) send SIGTERM, wait the task's ``stopTimeout``, then SIGKILL. Within the grace
the proxy stops accepting connections (aiohttp does that first), lets upstream fetches in
progress finish and land in the cache, and lets requests in progress finish sending. Both waits
share the one deadline; what is still running then is cancelled, which aborts unfinished cache
writes. aiohttp's own shutdown timeout, which would come on top, is kept to a couple of seconds
(``CLOSE_SECONDS``), so the process exits within the grace plus a few seconds: set
``stopTimeout`` at least ten seconds above the grace.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from proxy.concurrency.waits import wait_at_most

log = structlog.get_logger("proxy.shutdown")

# What aiohttp waits, after the drain, for handlers still running before cancelling them (and
# again for the cancellation): they already had the whole grace.
CLOSE_SECONDS = 2.0


class Drainable(Protocol):
    """The blob cache, as far as shutdown is concerned."""

    @property
    def in_flight(self) -> int: ...

    async def drain(self, grace: float) -> None: ...


class InFlightRequests:
    """Counts requests being answered, so that shutdown can wait until none is left."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """A request begins (the edge calls this, and ``leave`` when it ends)."""
        self.count += 1
        if self.count == 1:
            self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        """True when no request is in progress any more, False when ``seconds`` ran out."""
        if self._idle.is_set():
            return True
        return await wait_at_most(seconds, self._idle.wait())


async def drain(grace: float, fetches: Drainable, requests: InFlightRequests) -> None:
    """Wait for fetches, then for requests, until both are done or ``grace`` seconds passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    if fetches.in_flight or requests.count:
        log.info("shutdown.draining", fetches=fetches.in_flight, requests=requests.count)
    await fetches.drain(max(0.0, deadline - loop.time()))
    if not await requests.wait_idle(max(0.0, deadline - loop.time())):
        log.warning("shutdown.grace_expired", requests=requests.count, grace=grace)
