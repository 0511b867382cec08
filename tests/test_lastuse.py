"""Recording uses in memory and flushing them in batches (proxy/cache/upkeep/lastuse.py).

The records' storage semantics (batches, merging by several sweepers) are in the storage
conformance suite (tests/test_storage.py), on both backends.
"""

from __future__ import annotations

from pathlib import Path

from proxy.cache.upkeep.lastuse import LastUse, UseRecords
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


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
