"""proxy/cache/upkeep/pins.py: eviction never takes a blob a client is reading, a request for a
blob being evicted waits until it is gone, and prefetched blobs nobody asked for are told apart.
Through the app (eight readers racing an eviction): tests/http/test_eviction.py."""

from __future__ import annotations

import asyncio

from support.clock import Clock

from proxy.cache.upkeep.pins import SPECULATIVE_SECONDS, BlobPins


def test_a_held_blob_is_not_evicted_until_its_last_reader_lets_go() -> None:
    pins = BlobPins()
    pins.hold("a")
    pins.hold("a")
    assert pins.is_held("a") and pins.held == 1
    assert pins.begin_eviction("a") is False
    pins.release("a")
    assert pins.begin_eviction("a") is False, "one reader is still at it"
    pins.release("a")
    assert not pins.is_held("a") and pins.held == 0
    assert pins.begin_eviction("a") is True
    assert pins.begin_eviction("a") is False, "already going"
    pins.end_eviction("a")
    assert pins.begin_eviction("a") is True


async def test_a_request_for_a_blob_being_evicted_waits_for_the_delete() -> None:
    pins = BlobPins()
    await pins.settled("a")  # nothing going on: at once
    assert pins.begin_eviction("a")
    waiter = asyncio.create_task(pins.settled("a"))
    await asyncio.sleep(0)  # the waiter's first step: it waits for the eviction
    assert pins.waiting == 1 and not waiter.done()
    pins.end_eviction("a")
    await asyncio.wait_for(waiter, 5)
    assert pins.waiting == 0


def test_a_prefetched_blob_is_speculative_until_claimed_or_for_an_hour() -> None:
    clock = Clock()
    pins = BlobPins(clock=clock)
    pins.claim("nothing prefetched")  # no effect, no error
    pins.speculate("a", 100)
    pins.speculate("b", 50)
    assert pins.is_speculative("a") and pins.speculative_bytes == 150
    pins.claim("a")
    assert not pins.is_speculative("a") and pins.speculative_bytes == 50
    clock.advance(SPECULATIVE_SECONDS + 1)
    assert not pins.is_speculative("b") and pins.speculative_bytes == 0
