"""Waiting with a deadline without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the result when the awaited thing finishes in the
same event-loop step as a cancellation of the waiter, and the cancellation is gone (fixed in
3.12). A loop that waits that way (the cache janitor between passes) then never ends when it is
stopped: a CI run hung in teardown on exactly that. ``asyncio.timeout`` keeps the cancellation.
Use ``wait_at_most`` instead of ``wait_for`` for every wait with a deadline in the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def wait_at_most(seconds: float, waiting: Awaitable[object]) -> bool:
    """True when ``waiting`` finished within ``seconds``, False when the time ran out first."""
    try:
        async with asyncio.timeout(seconds):
            await waiting
    except TimeoutError:
        return False
    return True
