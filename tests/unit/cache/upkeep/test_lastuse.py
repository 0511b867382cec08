"""Recording uses in memory and flushing them in batches (proxy/cache/upkeep/lastuse.py).

The records' storage semantics (batches, merging by several sweepers) are in the storage
conformance suite (tests/test_storage.py), on both backends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.clock import Clock

from proxy.cache.upkeep.lastuse import LastUse, UseRecords
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage


async def test_touches_are_written_once_per_flush(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path)
    await storage.open()
    clock = Clock()
    records = UseRecords(FailSafeStorage(storage), "inst")
    last_use = LastUse(records, clock=clock)
    for _ in range(1000):
        last_use.touch("blobs/sha256/aa/x")
    clock.now += 5
    last_use.touch("tags/h/r/_tag/t")
    assert await last_use.flush()
    assert await last_use.flush()  # nothing new: nothing written
    keys = [key async for key in storage.keys("access/")]
    assert len(keys) == 1  # one write for 1001 hits
    assert (await records.read()).uses == {
        "blobs/sha256/aa/x": 1_000_000.0,
        "tags/h/r/_tag/t": 1_000_005.0,
    }


async def test_a_failed_flush_keeps_the_uses_for_the_next(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path)
    await storage.open()
    clock = Clock()
    safe = FailSafeStorage(storage, cooldown=0)
    last_use = LastUse(UseRecords(safe, "inst"), clock=clock)
    last_use.touch("blobs/sha256/aa/x")
    (tmp_path / "data").rename(tmp_path / "moved")
    (tmp_path / "data").write_bytes(b"")  # a file where the directory was: writes fail
    assert not await last_use.flush()
    clock.now += 10
    last_use.touch("blobs/sha256/aa/y")
    assert last_use.pending == {"blobs/sha256/aa/x": 1_000_000.0, "blobs/sha256/aa/y": 1_000_010.0}
    (tmp_path / "data").unlink()
    (tmp_path / "moved").rename(tmp_path / "data")
    assert await last_use.flush()
    assert last_use.pending == {}
    assert set((await last_use.records.read()).uses) == {"blobs/sha256/aa/x", "blobs/sha256/aa/y"}


class SlowWrites(FilesystemStorage):
    """A directory whose puts wait for ``gate`` (to touch entries while a flush writes)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        self.writing.set()
        await self.gate.wait()
        return await super().put(key, data, content_type=content_type, overwrite=overwrite)


async def test_uses_recorded_while_a_flush_writes_are_kept_for_the_next(tmp_path: Path) -> None:
    """Issue 21, mutation: a flush that clears the pending uses after its write loses those
    recorded meanwhile."""
    storage = SlowWrites(tmp_path)
    await storage.open()
    clock = Clock()
    last_use = LastUse(UseRecords(FailSafeStorage(storage), "inst"), clock=clock)
    last_use.touch("blobs/sha256/aa/x")
    flushing = asyncio.create_task(last_use.flush())
    await asyncio.wait_for(storage.writing.wait(), 5)
    clock.now += 1
    last_use.touch("blobs/sha256/aa/y")  # served while the first batch is being written
    last_use.touch("blobs/sha256/aa/x")  # ... and this one again
    storage.gate.set()
    assert await asyncio.wait_for(flushing, 5)
    assert last_use.pending == {
        "blobs/sha256/aa/y": 1_000_001.0,
        "blobs/sha256/aa/x": 1_000_001.0,
    }
    assert await last_use.flush()
    assert (await last_use.records.read()).uses == {
        "blobs/sha256/aa/x": 1_000_001.0,
        "blobs/sha256/aa/y": 1_000_001.0,
    }
