"""Reads on the event loop from the page cache, in a worker thread when they would wait."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.storage import pagecache

DATA = os.urandom(300_000)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the reads sent to a worker thread."""
    sizes: list[int] = []
    to_thread = asyncio.to_thread

    async def counting(function: Any, *args: Any) -> Any:
        sizes.append(args[1])
        return await to_thread(function, *args)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return sizes


async def test_cached_bytes_are_read_without_a_thread(fd: int, threads: list[int]) -> None:
    assert await pagecache.pread(fd, 65_536, 1000) == DATA[1000:66_536]
    assert await pagecache.pread(fd, 65_536, len(DATA) - 10) == DATA[-10:]
    assert await pagecache.pread(fd, 10, len(DATA)) == b""
    assert threads == []


@pytest.mark.parametrize(
    "failure",
    [BlockingIOError(errno.EAGAIN, "would wait"), OSError(errno.EOPNOTSUPP, "unsupported")],
    ids=["not cached", "no RWF_NOWAIT"],
)
async def test_a_read_that_would_wait_goes_to_a_thread(
    fd: int, threads: list[int], monkeypatch: pytest.MonkeyPatch, failure: OSError
) -> None:
    def fails(*args: Any) -> int:
        raise failure

    monkeypatch.setattr(os, "preadv", fails)
    assert await pagecache.pread(fd, 65_536, 1000) == DATA[1000:66_536]
    assert threads == [65_536]


async def test_a_partly_cached_read_gets_the_rest_from_a_thread(
    fd: int, threads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    preadv = os.preadv

    def first_kilobyte_cached(fd: int, buffers: list[memoryview], offset: int, flags: int) -> int:
        if offset >= 1005:
            raise BlockingIOError(errno.EAGAIN, "would wait")
        return preadv(fd, [memoryview(buffers[0])[: 1005 - offset]], offset, flags)

    monkeypatch.setattr(os, "preadv", first_kilobyte_cached)
    assert await pagecache.pread(fd, 65_536, 5) == DATA[5:65_541]
    assert threads == [64_536]


def test_other_errors_are_raised(fd: int) -> None:
    with pytest.raises(OSError, match="Bad file descriptor"):
        pagecache.read_now(-1, bytearray(10), 0)
