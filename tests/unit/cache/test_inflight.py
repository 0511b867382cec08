"""The in-flight download's readers (``proxy.cache.inflight.BlobFetch``), without a pump.

The rule that makes a bad blob always end in an aborted response: a reader never gets the last
byte of its range (the blob's last byte, or the end of its Range) before ``finish(None)`` said
the whole blob verified; after ``finish(error)`` every reader gets the error instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.cache.inflight import BlobFetch
from proxy.cache.spool import SpoolBuffer

DATA = bytes(range(100)) * 10  # 1000 bytes
WAIT = 5.0  # bound on waits for something that must happen


@pytest.fixture
async def fetch(tmp_path: Path) -> AsyncIterator[BlobFetch]:
    made = BlobFetch("sha256:" + "0" * 64, SpoolBuffer(tmp_path))
    yield made
    if made.state.value in ("starting", "streaming"):
        await made.finish(RuntimeError("test over"))


async def next_chunk(reader: AsyncIterator[bytes]) -> bytes:
    return await asyncio.wait_for(anext(reader), WAIT)


async def blocked(task: asyncio.Task[bytes]) -> bool:
    """Whether ``task`` still waits after every ready callback ran (no I/O is pending for it:
    a reader that may not send waits on the fetch's condition, nothing else)."""
    for _ in range(20):
        await asyncio.sleep(0)
    return not task.done()


async def test_the_last_byte_waits_for_verification(fetch: BlobFetch) -> None:
    await fetch.started(len(DATA))
    await fetch.append(DATA)  # every byte is there, not yet verified
    reader = fetch.read()
    assert await next_chunk(reader) == DATA[:-1]
    last = asyncio.ensure_future(anext(reader))
    assert await blocked(last)
    await fetch.finish(None)
    assert await asyncio.wait_for(last, WAIT) == DATA[-1:]
    with pytest.raises(StopAsyncIteration):
        await next_chunk(reader)


async def test_the_end_of_a_range_waits_too(fetch: BlobFetch) -> None:
    await fetch.started(len(DATA))
    await fetch.append(DATA)
    reader = fetch.read(100, 199)
    assert await next_chunk(reader) == DATA[100:199]
    last = asyncio.ensure_future(anext(reader))
    assert await blocked(last)
    await fetch.finish(None)
    assert await asyncio.wait_for(last, WAIT) == DATA[199:200]
    with pytest.raises(StopAsyncIteration):
        await next_chunk(reader)


async def test_a_range_inside_the_blob_streams_up_to_its_last_byte(fetch: BlobFetch) -> None:
    """Bytes before the range's end flow as they arrive, before the blob is complete."""
    await fetch.started(len(DATA))
    await fetch.append(DATA[:500])
    reader = fetch.read(0, 299)
    assert await next_chunk(reader) == DATA[:299]
    pending = asyncio.ensure_future(anext(reader))
    assert await blocked(pending)  # byte 299 is written but is the range's last
    await fetch.append(DATA[500:])
    assert await blocked(pending)
    await fetch.finish(None)
    assert await asyncio.wait_for(pending, WAIT) == DATA[299:300]


async def test_a_reader_following_the_pump_never_gets_ahead_of_verification(
    fetch: BlobFetch,
) -> None:
    await fetch.started(len(DATA))
    reader = fetch.read()
    received = bytearray()
    for start in range(0, len(DATA), 250):
        await fetch.append(DATA[start : start + 250])
        received += await next_chunk(reader)
    assert bytes(received) == DATA[:-1]
    await fetch.finish(None)
    received += await next_chunk(reader)
    assert bytes(received) == DATA


async def test_unknown_size_holds_back_the_last_byte_written(fetch: BlobFetch) -> None:
    await fetch.started(None)
    await fetch.append(DATA[:600])
    reader = fetch.read()
    assert await next_chunk(reader) == DATA[:599]
    pending = asyncio.ensure_future(anext(reader))
    assert await blocked(pending)
    await fetch.append(DATA[600:])
    assert await asyncio.wait_for(pending, WAIT) == DATA[599:999]
    await fetch.finish(None)
    assert await next_chunk(reader) == DATA[999:]


async def test_a_failed_fetch_gives_its_error_instead_of_the_last_byte(fetch: BlobFetch) -> None:
    await fetch.started(len(DATA))
    await fetch.append(DATA)
    reader = fetch.read()
    assert await next_chunk(reader) == DATA[:-1]
    last = asyncio.ensure_future(anext(reader))
    assert await blocked(last)
    mismatch = ValueError("sha256 mismatch")
    await fetch.finish(mismatch)
    with pytest.raises(ValueError, match="mismatch"):
        await asyncio.wait_for(last, WAIT)
    # A reader that comes later gets the error at once, as does one waiting for the headers.
    with pytest.raises(ValueError, match="mismatch"):
        await next_chunk(fetch.read())
    with pytest.raises(ValueError, match="mismatch"):
        await fetch.wait_started()


async def test_a_fetch_that_fails_before_its_headers_fails_its_waiters(fetch: BlobFetch) -> None:
    waiter = asyncio.ensure_future(fetch.wait_started())
    assert await blocked(waiter)  # type: ignore[arg-type]
    await fetch.finish(ConnectionError("upstream gone"))
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiter, WAIT)


async def test_the_spool_goes_when_the_last_reader_is_done(
    fetch: BlobFetch, tmp_path: Path
) -> None:
    [name] = os.listdir(tmp_path)
    spool = tmp_path / name
    await fetch.started(len(DATA))
    await fetch.append(DATA)
    reader = fetch.read()
    await next_chunk(reader)
    await fetch.finish(None)
    assert spool.exists()  # a reader still needs it
    assert await next_chunk(reader) == DATA[-1:]
    with pytest.raises(StopAsyncIteration):
        await next_chunk(reader)
    assert not spool.exists()
