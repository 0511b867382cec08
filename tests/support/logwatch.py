"""Watching the proxy's structured log events from an in-process test, with a bounded wait.

``structlog.testing.capture_logs`` collects events into a list, but a test that needs to know
*when* something was logged (a handler has ended, so its access-log line is written) would have
to poll it. :func:`watch_logs` collects the same event dictionaries and wakes a waiter at each::

    with watch_logs() as logs:
        ...  # start requests
        line = await logs.wait_for(lambda e: e["event"] == "request")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import structlog

Event = MutableMapping[str, Any]


class LogWatch:
    """A structlog processor that keeps every event (and drops it: nothing is printed)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def __call__(self, _logger: object, method: str, event: Event) -> Event:
        event.setdefault("log_level", method)
        self.events.append(event)
        # Code running in a worker thread (file I/O) may log too: wake the loop safely.
        self._loop.call_soon_threadsafe(self._changed.set)
        raise structlog.DropEvent

    # Bounded by design: no test can wait forever by forgetting a timeout.
    async def wait_for(
        self,
        predicate: Callable[[Event], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> Event:
        """The first event for which ``predicate`` holds, once it is logged (TimeoutError)."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()


@contextlib.contextmanager
def watch_logs() -> Iterator[LogWatch]:
    """Route every log event to a fresh :class:`LogWatch` while the block runs (in a test's
    event loop), then restore the configuration."""
    watch = LogWatch()
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, watch],
        cache_logger_on_first_use=False,
    )
    try:
        yield watch
    finally:
        structlog.configure(**previous)
