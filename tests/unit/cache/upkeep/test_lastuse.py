"""Last use (proxy/cache/upkeep/lastuse.py): uses recorded in memory and flushed in batches, and
the records in storage, on every backend (the ``storage`` fixture: tests/unit/conftest.py).

Records are written by every instance in batches and merged by sweeps: on both backends no time
is ever lost, whoever merges at the same time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.clock import Clock
from support.faulty_storage import GatedWrites

from proxy.cache.upkeep.lastuse import LastUse, UseRecords
from proxy.storage import (
    Storage,
)
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


async def test_uses_recorded_while_a_flush_writes_are_kept_for_the_next(tmp_path: Path) -> None:
    """Issue 21, mutation: a flush that clears the pending uses after its write loses those
    recorded meanwhile."""
    storage = GatedWrites(tmp_path)
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


def records_on(storage: Storage, instance: str) -> UseRecords:
    return UseRecords(FailSafeStorage(storage, cooldown=0), instance)


async def test_use_records_from_several_instances_merge(storage: Storage) -> None:
    a, b = records_on(storage, "aaaa"), records_on(storage, "bbbb")
    assert await a.write({"blobs/sha256/aa/x": 100.0, "tags/h/r/_tag/t": 100.0}, now=100)
    assert await b.write({"blobs/sha256/aa/x": 250.0, "manifests/sha256/bb/y": 120.0}, now=250)
    assert await a.write({"blobs/sha256/aa/x": 200.0}, now=200)

    found = await a.read()
    assert found.uses == {
        "blobs/sha256/aa/x": 250.0,
        "tags/h/r/_tag/t": 100.0,
        "manifests/sha256/bb/y": 120.0,
    }
    assert len(found.keys) == 3
    assert found.bytes > 0


async def test_use_records_are_batches_of_bounded_size(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxy.cache.upkeep.lastuse.MAX_USES_PER_RECORD", 3)
    records = records_on(storage, "aaaa")
    uses = {f"blobs/sha256/aa/{i:02d}": float(i + 1) for i in range(7)}
    assert await records.write(uses, now=10)
    found = await records.read()
    assert len(found.keys) == 3  # 3 + 3 + 1
    assert found.uses == uses


async def test_compacting_replaces_what_was_read_and_keeps_later_records(
    storage: Storage,
) -> None:
    a, b = records_on(storage, "aaaa"), records_on(storage, "bbbb")
    await a.write({"blobs/sha256/aa/x": 100.0, "blobs/sha256/aa/gone": 90.0}, now=100)
    await b.write({"blobs/sha256/aa/x": 150.0}, now=150)
    read = await a.read()
    await b.write({"blobs/sha256/aa/x": 300.0}, now=300)  # after the read: must survive

    assert await a.compact(read, now=310, keep=lambda key: key != "blobs/sha256/aa/gone")

    found = await a.read()
    assert found.uses == {"blobs/sha256/aa/x": 300.0}
    assert len(found.keys) == 2  # the merged record and the one written after the read
    merged = await FailSafeStorage(storage).get(next(k for k in found.keys if "-aaaa-" in k))
    assert merged is not None and b'"blobs/sha256/aa/x":150' in merged[0]


async def test_sweepers_compacting_at_once_lose_nothing(storage: Storage) -> None:
    writers = [records_on(storage, f"w{i:03d}") for i in range(3)]
    expected: dict[str, float] = {}
    for i, writer in enumerate(writers):
        uses = {f"blobs/sha256/aa/{i}": 10.0 + i, "blobs/sha256/aa/shared": 20.0 + i}
        await writer.write(uses, now=20 + i)
        for key, when in uses.items():
            expected[key] = max(expected.get(key, 0.0), when)
    first, second = records_on(storage, "s001"), records_on(storage, "s002")
    # Both read the same records, then both merge and delete them, in either order.
    read_first, read_second = await first.read(), await second.read()
    assert await first.compact(read_first, now=100)
    assert await second.compact(read_second, now=101)
    assert (await first.read()).uses == expected
    # One read after the other's merge sees the merged record only where it was not deleted yet.
    read_third = await first.read()
    late = records_on(storage, "s003")
    assert await late.compact(read_third, now=102)
    assert await first.compact(read_third, now=103)  # the same records again: already gone
    found = await first.read()
    assert found.uses == expected
    assert len(found.keys) <= 2


async def test_a_bad_record_is_skipped_and_merged_away(storage: Storage) -> None:
    records = records_on(storage, "aaaa")
    await storage.put("access/0000000001-zzzz-1", b"not json")
    await records.write({"blobs/sha256/aa/x": 5.0}, now=5)
    found = await records.read()
    assert found.uses == {"blobs/sha256/aa/x": 5.0}
    assert await records.compact(found, now=6)
    assert [key async for key in storage.keys("access/")] != []
    assert (await records.read()).uses == {"blobs/sha256/aa/x": 5.0}
    assert len((await records.read()).keys) == 1
