"""Single-flight: concurrent calls with the same key share one execution.

The shared work runs in its own task, shielded from its callers: a client that disconnects stops
waiting but does not cancel the fetch the others (and the cache) still want.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SingleFlight(Generic[V]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[V]]) -> V:
        """Run ``work`` once for all concurrent callers with ``key``; each gets its result."""
        future = self._calls.get(key)
        if future is None:
            future = asyncio.ensure_future(work())
            self._calls[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(future)

    def _finished(self, key: Hashable, future: asyncio.Future[V]) -> None:
        if self._calls.get(key) is future:
            del self._calls[key]
        if not future.cancelled():
            future.exception()  # mark retrieved: every waiter already got it re-raised
