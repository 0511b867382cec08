"""Ranged-part reads (proxy.storage.parts), against an in-memory object whose responses a test can
break, count and watch being closed."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import AsyncGenerator, AsyncIterator

import pytest
from support.waiting import wait_until

from proxy.storage.base import StorageError
from proxy.storage.parts import OpenPart, read_parts

DATA = os.urandom(10_007)
PART = 1000
CHUNK = 300


class FakeObject:
    """Serves ranged parts of ``data`` the way S3 does (the end is cut at the last byte)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, int]] = []
        self.open_bodies: set[FakeBody] = set()
        self.bodies: weakref.WeakSet[FakeBody] = weakref.WeakSet()  # every body still in memory
        self.break_at: list[int] = []  # absolute positions where a body breaks off (once each)
        self.events: list[tuple[str, int]] = []  # ("open", first byte) / ("read", end position)

    async def open_part(self, first: int, last: int) -> OpenPart | None:
        self.requests.append((first, last))
        self.events.append(("open", first))
        await asyncio.sleep(0)  # a real request waits for its answer
        if first >= len(self.data):
            return None
        last = min(last, len(self.data) - 1)
        body = FakeBody(self, first, last)
        self.open_bodies.add(body)
        self.bodies.add(body)
        return OpenPart(body, first, last, len(self.data))


class FakeBody:
    def __init__(self, source: FakeObject, first: int, last: int) -> None:
        self.source = source
        self.position = first
        self.last = last

    async def read(self, size: int) -> bytes:
        await asyncio.sleep(0)
        assert self in self.source.open_bodies, "read from a closed body"
        end = min(self.position + size, self.last + 1)
        for point in self.source.break_at:
            if point == self.position:
                self.source.break_at.remove(point)
                raise StorageError("connection reset")
            if self.position < point < end:
                end = point  # what arrived before the break
        chunk = self.source.data[self.position : end]
        self.position = end
        self.source.events.append(("read", end))
        return chunk

    def close(self) -> None:
        self.source.open_bodies.discard(self)


def reader(source: FakeObject, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
    return read_parts(
        source.open_part, start, end, part_size=PART, chunk_size=CHUNK, release_after=0.05
    )


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, len(DATA) - 1),
        (0, 0),
        (999, 1000),  # across a part boundary
        (1000, 1999),  # exactly one part
        (1500, 7777),
        (len(DATA) - 1, None),
        (5, len(DATA) * 3),  # past the end: cut at the last byte
    ],
)
async def test_any_range_is_byte_exact(start: int, end: int | None) -> None:
    source = FakeObject(DATA)
    stop = len(DATA) if end is None else min(end + 1, len(DATA))
    assert await collect(reader(source, start, end)) == DATA[start:stop]
    assert not source.open_bodies


async def test_a_range_starting_past_the_end_is_empty() -> None:
    source = FakeObject(DATA)
    assert await collect(reader(source, len(DATA), None)) == b""
    assert await collect(reader(source, len(DATA) + 5, len(DATA) + 10)) == b""


async def test_parts_are_consecutive_and_the_next_is_asked_for_before_it_is_needed() -> None:
    source = FakeObject(DATA)
    assert await collect(reader(source, 500, None)) == DATA[500:]
    assert source.requests == [
        (500, 1499),
        *[(first, min(first + PART, len(DATA)) - 1) for first in range(1500, len(DATA), PART)],
    ]
    # Each next part was asked for while the one before still had bytes to be read.
    for first, _ in source.requests[1:]:
        opened = source.events.index(("open", first))
        assert any(kind == "read" and end <= first for kind, end in source.events[opened + 1 :])


async def test_a_body_that_breaks_off_is_resumed_where_it_stopped() -> None:
    source = FakeObject(DATA)
    source.break_at = [1234, 5000, 5001]  # mid-part, a part's first byte, right after a resume
    assert await collect(reader(source)) == DATA
    assert (1234, 1999) in source.requests  # asked again from the first byte not passed on
    assert (5000, 5999) in source.requests and (5001, 5999) in source.requests


async def test_a_break_in_a_parts_last_quarter_resumes_there_not_at_the_next_part() -> None:
    """The look-ahead request for the next part is already out when the current part breaks in
    its last quarter: it must not be taken for the part that holds the position to resume from
    (issue 21, mutation: the look-ahead used whatever its offset)."""
    for cut in (1900, 1950):  # at a chunk's start, and inside one
        source = FakeObject(DATA)
        source.break_at = [cut]
        assert await collect(reader(source)) == DATA
        assert (2000, 2999) in source.requests  # the look-ahead was out ...
        assert (cut, 1999) in source.requests  # ... and the break resumed where it happened
        assert not source.open_bodies


async def test_a_body_that_keeps_breaking_raises() -> None:
    source = FakeObject(DATA)
    source.break_at = [2500, 2500, 2500]  # three times in a row at the same byte
    with pytest.raises(StorageError, match="3 times in a row"):
        await collect(reader(source))
    assert not source.open_bodies


async def test_a_consumer_that_stops_reading_holds_no_response() -> None:
    source = FakeObject(DATA)
    stream = reader(source)
    received = [await anext(stream)]
    assert source.open_bodies  # reading
    # The consumer stops; after release_after the responses are given back.
    await wait_until(lambda: not source.open_bodies, "the responses to be closed")
    # ... and freed, with whatever the HTTP client had buffered of them.
    gc.collect()
    assert not list(source.bodies)
    requests = len(source.requests)
    received += [chunk async for chunk in stream]  # it comes back: reading resumes
    assert b"".join(received) == DATA
    assert source.requests[requests] == (CHUNK, PART - 1)  # from the first byte not yet sent
    assert not source.open_bodies


async def test_closing_the_stream_early_closes_every_response() -> None:
    source = FakeObject(DATA)
    stream = reader(source)
    # Read into the last quarter of the first part, so the look-ahead request is out too.
    got = 0
    while got < 800:
        got += len(await anext(stream))
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()
    await wait_until(lambda: not source.open_bodies, "every response to be closed")
