"""proxy/concurrency/singleflight.py: concurrent calls with one key share one execution, which
no caller's cancellation stops. Through the app (a client that leaves, a fetch others wait on):
tests/http/test_singleflight.py."""

from __future__ import annotations

import asyncio

import pytest

from proxy.concurrency.singleflight import SingleFlight


async def test_concurrent_calls_with_one_key_share_one_execution() -> None:
    flight: SingleFlight[str] = SingleFlight()
    started = 0
    both_started = asyncio.Event()
    release = asyncio.Event()

    async def work() -> str:
        nonlocal started
        started += 1
        number = started
        if started == 2:
            both_started.set()
        await release.wait()
        return f"result {number}"

    calls = [asyncio.create_task(flight.run("key", work)) for _ in range(5)]
    other = asyncio.create_task(flight.run("other", work))
    await asyncio.wait_for(both_started.wait(), 5)
    await asyncio.sleep(0)  # a third execution, if any, would have started by now
    assert started == 2 and len(flight) == 2
    release.set()
    results = await asyncio.gather(*calls)
    assert len(set(results)) == 1
    assert await other != results[0]
    assert len(flight) == 0, "a finished call is forgotten: the next one runs again"
    assert await flight.run("key", work) == "result 3"


async def test_a_caller_that_leaves_does_not_cancel_the_work_the_others_wait_on() -> None:
    flight: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 42

    leaving = asyncio.create_task(flight.run("key", work))
    staying = asyncio.create_task(flight.run("key", work))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    release.set()
    assert await staying == 42


async def test_every_caller_gets_the_failure() -> None:
    flight: SingleFlight[None] = SingleFlight()
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()
        raise LookupError("upstream said no")

    calls = [asyncio.create_task(flight.run("key", work)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    for call in calls:
        with pytest.raises(LookupError, match="upstream said no"):
            await call
    assert len(flight) == 0
