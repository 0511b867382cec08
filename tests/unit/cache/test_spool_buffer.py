"""A download whose spool disk fills up (proxy/cache/spool.py SpoolBuffer, proxy/cache/inflight.py).

The disk is made "full" after a number of bytes by replacing the spool's write with one that
raises ENOSPC; the real thing, on a small tmpfs, is in tests/test_disk_full.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from proxy.cache import inflight, spool
from proxy.cache.inflight import BlobFetch
from proxy.cache.spool import SpoolBuffer, SpoolGap
from proxy.storage import StorageError

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def disk_room(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``disk_room[0]``: bytes the spool disk takes before ENOSPC (it then writes a part)."""
    room = [1 * MiB]
    original = spool._pwrite_all

    def write(fd: int, data: bytes, offset: int) -> None:
        if offset + len(data) > room[0]:
            fits = max(0, room[0] - offset)
            original(fd, data[:fits], offset)  # a partial write lands, as on a real disk
            raise OSError(errno.ENOSPC, "No space left on device")
        original(fd, data, offset)

    monkeypatch.setattr(spool, "_pwrite_all", write)
    yield room


def blob(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def pieces(data: bytes, size: int = 64 * KiB) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def test_buffer_spills_to_memory_and_gives_the_disk_back(
    tmp_path: Path, disk_room: list[int]
) -> None:
    reports: list[tuple[str, str]] = []
    data = blob(3 * MiB)
    buffer = SpoolBuffer(tmp_path, lambda where, detail: reports.append((where, detail)))
    assert buffer.path is not None
    for chunk in pieces(data):
        await buffer.append(chunk)
    assert buffer.spilled and buffer.on_disk == 1 * MiB
    assert buffer.path.stat().st_size == 1 * MiB  # the partial write was cut off
    assert buffer.memory_bytes == 2 * MiB
    assert [where for where, _ in reports] == ["spool"]  # reported once, when it happened
    assert await buffer.read(0, 10) == data[:10]
    assert await buffer.read(MiB - 5, 100) == data[MiB - 5 : MiB]  # a read stops at the file's end
    assert await buffer.read(MiB, 100) == data[MiB : MiB + 100]
    assert buffer.memory_start == buffer.on_disk  # nothing let go yet: complete from the start

    buffer.trim(2 * MiB)
    assert buffer.memory_bytes == 1 * MiB
    assert not buffer.complete_from_start
    assert buffer.readable(0) and not buffer.readable(MiB + 1) and buffer.readable(2 * MiB)
    with pytest.raises(SpoolGap):
        await buffer.read(MiB + 1, 10)
    assert await buffer.read(2 * MiB, 10) == data[2 * MiB : 2 * MiB + 10]
    buffer.close()
    assert os.listdir(tmp_path) == []


async def test_no_room_even_for_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "open", full)  # (only the spool file is opened meanwhile)
    buffer = SpoolBuffer(tmp_path, None)
    await buffer.append(b"abc")
    assert buffer.spilled and buffer.on_disk == 0
    assert await buffer.read(0, 10) == b"abc"
    buffer.close()


async def pump(fetch: BlobFetch, data: bytes) -> None:
    await fetch.started(len(data))
    for chunk in pieces(data):
        await fetch.append(chunk)
    await fetch.finish(None)


async def collect(stream: AsyncIterator[bytes], pace: asyncio.Event | None = None) -> bytes:
    received = bytearray()
    async for chunk in stream:
        received += chunk
        if pace is not None:
            await pace.wait()
    return bytes(received)


async def test_readers_get_whole_blob_while_memory_stays_in_a_window(
    tmp_path: Path, disk_room: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inflight, "MEMORY_WINDOW", 512 * KiB)
    data = blob(6 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, fetch.memory_bytes)
            await asyncio.sleep(0)

    readers = [fetch.reader() for _ in range(4)]
    watcher = asyncio.create_task(watch())
    results = await asyncio.wait_for(
        asyncio.gather(pump(fetch, data), *(collect(r.read(0, None)) for r in readers)), 30
    )
    watcher.cancel()
    assert all(result == data for result in results[1:])
    # The download waited for its readers: memory held at most the window plus one chunk.
    assert 0 < peak <= 512 * KiB + 64 * KiB


async def test_a_late_reader_cannot_start_from_a_released_start(
    tmp_path: Path, disk_room: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inflight, "MEMORY_WINDOW", 256 * KiB)
    data = blob(3 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    first = fetch.reader()
    reading = asyncio.create_task(collect(first.read(0, None)))
    await asyncio.wait_for(pump(fetch, data), 30)
    assert await reading == data
    assert not fetch.complete_from_start  # the blob cache starts another download instead


async def test_a_stalled_reader_is_cut_off_and_the_others_finish(
    tmp_path: Path, disk_room: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inflight, "MEMORY_WINDOW", 256 * KiB)
    monkeypatch.setattr(inflight, "STALL_TIMEOUT", 0.2)
    data = blob(4 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    never = asyncio.Event()  # the stalled client never reads on
    stalled = asyncio.create_task(collect(fetch.reader().read(0, None), pace=never))
    healthy = asyncio.create_task(collect(fetch.reader().read(0, None)))
    await asyncio.wait_for(pump(fetch, data), 30)
    assert await asyncio.wait_for(healthy, 30) == data
    never.set()
    with pytest.raises(StorageError, match="fell behind"):
        await asyncio.wait_for(stalled, 30)


async def test_unused_reservation_is_released(tmp_path: Path, disk_room: list[int]) -> None:
    data = blob(2 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    reservation = fetch.reader()
    reservation.close()  # (what the finalizer of an unread BlobContent does)
    await asyncio.wait_for(pump(fetch, data), 30)  # nothing holds the download back
    assert fetch.memory_bytes == 0


async def test_other_spool_errors_fail_the_download_as_storage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An OSError would read as "the client went away" at the route, which then leaves the other
    # clients waiting instead of aborting them.
    def broken(fd: int, data: bytes, offset: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool, "_pwrite_all", broken)
    buffer = SpoolBuffer(tmp_path, None)
    with pytest.raises(StorageError, match="Input/output error"):
        await buffer.append(b"abc")
    assert not buffer.spilled
    buffer.close()
