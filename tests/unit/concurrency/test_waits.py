"""proxy/concurrency/waits.py: a wait with a deadline that says whether it finished in time, and
never loses a cancellation that arrives in the step the wait ends (Python 3.11's
``asyncio.wait_for`` does)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.concurrency.waits import wait_at_most


async def test_it_says_whether_the_wait_finished_in_time() -> None:
    finished = asyncio.get_running_loop().create_future()
    finished.set_result(None)
    assert await wait_at_most(5, finished) is True
    never = asyncio.Event()
    assert await wait_at_most(0.01, never.wait()) is False


async def test_a_cancellation_in_the_step_the_wait_ends_is_kept() -> None:
    """The awaited future finishes and the waiter is cancelled in one event-loop step (the
    janitor being stopped just as it is woken): the waiter must end cancelled."""
    woken = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(wait_at_most(10, woken))
    await asyncio.sleep(0)  # the waiter is waiting
    woken.set_result(None)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
