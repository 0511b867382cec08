"""The server's background housekeeping (proxy/cache/upkeep/janitor.py): flushes, sweeps, survives.

Intervals are made short and every wait is for a condition, bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from proxy.cache.upkeep import janitor as janitor_module
from proxy.cache.upkeep.housekeeping import Housekeeper, SweepReport
from proxy.cache.upkeep.janitor import Janitor
from proxy.cache.upkeep.lastuse import LastUse, UseRecords
from proxy.config import CacheLimit
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage

DAY = 86400.0
TAG = "tags/docker.io/library/x/_tag/old"


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


async def make(
    tmp_path: Path, flush_interval: float = janitor_module.FLUSH_INTERVAL
) -> tuple[Janitor, FilesystemStorage]:
    storage = FilesystemStorage(tmp_path / "cache")
    await storage.open()
    safe = FailSafeStorage(storage, cooldown=0)
    last_use = LastUse(UseRecords(safe, "inst"))
    keeper = Housekeeper(safe, last_use.records, limit=None, expire_unused=30 * DAY)
    return Janitor(keeper, last_use, sweep_interval=3600, flush_interval=flush_interval), storage


async def test_flushes_every_interval_and_on_stop(tmp_path: Path) -> None:
    janitor, _ = await make(tmp_path, flush_interval=0.05)
    janitor.start()
    janitor.last_use.touch("blobs/sha256/aa/x")
    # Stopping may cancel this flush half-way: the final flush still writes it.
    await until(lambda: not janitor.last_use.pending, "the periodic flush")
    janitor.last_use.touch("blobs/sha256/aa/y")
    await janitor.stop()  # flushes what is left
    uses = (await janitor.last_use.records.read()).uses
    assert set(uses) == {"blobs/sha256/aa/x", "blobs/sha256/aa/y"}


async def test_sweeps_soon_after_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(janitor_module, "FIRST_SWEEP_DELAY", 0.0)
    janitor, storage = await make(tmp_path)
    await storage.put(TAG, b"{}")
    janitor.housekeeper.clock = lambda: time.time() + 100 * DAY  # long after it was written
    janitor.start()
    await until(lambda: janitor.last_sweep is not None, "the first sweep")
    await janitor.stop()
    assert janitor.last_sweep is not None
    assert [e.key for e in janitor.last_sweep.expired] == [TAG]
    assert await storage.stat(TAG) is None


async def test_a_failing_sweep_is_logged_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(janitor_module, "FIRST_SWEEP_DELAY", 0.0)
    janitor, storage = await make(tmp_path, flush_interval=0.05)
    (storage.data_dir / "tags").write_bytes(b"")  # a file where a directory must be: lists fail
    (storage.data_dir / "access").write_bytes(b"")
    with structlog.testing.capture_logs() as logs:
        janitor.start()
        await until(lambda: any(e["event"] == "cache.housekeeping_failed" for e in logs), "log")
        janitor.last_use.touch("blobs/sha256/aa/x")
        await until(lambda: janitor._task is not None and not janitor._task.done(), "alive")
        await janitor.stop()
    assert janitor.last_sweep is None


async def test_stop_ends_the_loop_even_when_woken_in_the_same_step(tmp_path: Path) -> None:
    # A wake-up and the cancellation of stop() landing in one event-loop step: Python 3.11's
    # asyncio.wait_for then returns the wake-up and drops the cancellation, and the loop would
    # wait again forever (a CI run hung in teardown this way).
    janitor, _ = await make(tmp_path)
    janitor.housekeeper.limit = CacheLimit(max_bytes=1 << 40)  # so that it takes an inventory
    janitor.start()
    await until(lambda: janitor.housekeeper.last is not None, "the first inventory")
    for _ in range(10):  # back in its wait (bounded: a few steps after the inventory)
        await asyncio.sleep(0)
    janitor.make_room()
    stopping = asyncio.create_task(janitor.stop())
    # asyncio.wait, not wait_for: its cancellation at the deadline would end the loop itself.
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:
        stopping.cancel()
    assert done, "stop() did not end the janitor's loop"


async def test_a_blob_stored_during_a_pass_that_goes_over_the_limit_gets_a_pass_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The blob is measured against the old inventory while the pass runs, so it cannot wake the
    # loop itself; without a recheck the cache would stay over its limit until the next check.
    janitor, storage = await make(tmp_path)
    janitor.check_interval = 3600.0
    await storage.put("blobs/sha256/aa/" + "a" * 64, b"x" * 1000)
    janitor.housekeeper.limit = CacheLimit(max_bytes=1500)
    evict = janitor.housekeeper.evict
    passes: list[int] = []

    async def evict_storing_a_blob_meanwhile(make_room: bool = False) -> SweepReport:
        first = not passes
        if first:  # a download finishes while the pass lists the cache: no inventory to go by
            janitor.stored(1000)
        report = await evict(make_room=make_room)
        passes.append(report.bytes_after)
        if first:  # ... and lands after the listing: 1000 + 1000 > 1500
            await storage.put("blobs/sha256/bb/" + "b" * 64, b"y" * 1000)
        return report

    monkeypatch.setattr(janitor.housekeeper, "evict", evict_storing_a_blob_meanwhile)
    janitor.start()
    try:
        await until(lambda: len(passes) >= 2, "a second pass")
    finally:
        await janitor.stop()
    assert passes[1] <= 1500
