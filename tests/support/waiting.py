"""Waiting in tests for what the code under test offers no event to wait on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

POLLS = 1000
POLL_SECONDS = 0.01


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` on the event loop for up to 10 s; TimeoutError naming ``what``."""
    for _ in range(POLLS):
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"waited {POLLS * POLL_SECONDS:.0f} s for {what}")
