"""Sweeps and evictions, carried out: shared by the server's background janitor and
``registry-proxy cache gc``.

A sweep: take the inventory; delete what expired (``PROXY_CACHE_EXPIRE_UNUSED``); if the cache
is still over its size limit, evict the least recently used down to the low-water mark; delete
the content links that name nothing cached any more; delete the fleet records of instances that
stopped reporting (``proxy.ops.fleet``); merge the use records; remove temporary
files nobody holds (their writer's lock is gone: ``proxy.storage.tempfiles``). An eviction
pass does only the size part (the server runs one when the cache grows past its limit or the
disk fills up).

Safe with several sweepers at once (other instances, a scheduled ``cache gc``): deletes are
idempotent, records are merged without loss (``proxy.cache.upkeep.lastuse``), and a sweep that met
any storage failure while taking its inventory deletes nothing (a manifest it could not read might
name blobs that would then look unused). Inside the server, blobs a client is reading are never
evicted and a request for a blob being evicted waits and then fetches it (``BlobPins``).

The one race left is across processes: another instance may start serving an entry in the
minute before its use reaches storage, just as a sweep deletes it. Its client then gets the
blob whole from an already opened file (filesystem) or from the upstream on its next attempt;
with expiry windows of days that is rare, and never a wrong byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from proxy.cache.spool import MARKER
from proxy.cache.upkeep.inventory import Entry, Inventory, Kind, ManifestReferences, take_inventory
from proxy.cache.upkeep.lastuse import UseRecords
from proxy.cache.upkeep.pins import BlobPins
from proxy.cache.upkeep.retention import (
    LOW_WATER,
    DiskSpace,
    choose_evictions,
    dangling_links,
    expired,
    size_limit,
)
from proxy.config import CacheLimit
from proxy.ops.fleet import remove_dead_records
from proxy.storage import StorageError
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.tempfiles import remove_abandoned

log = structlog.get_logger(__name__)


class SweepAborted(StorageError):
    """Storage failed while the sweep took its inventory: it deleted nothing."""


@dataclass(slots=True)
class SweepReport:
    dry_run: bool = False
    entries: int = 0  # in the inventory
    bytes_before: int = 0
    limit: int | None = None
    expired: list[Entry] = field(default_factory=list)
    evicted: list[Entry] = field(default_factory=list)
    held: int = 0  # blobs eviction skipped because a client was reading them
    links: list[Entry] = field(default_factory=list)  # naming content no longer cached
    fleet_records: list[str] = field(default_factory=list)  # of instances that stopped
    temp_files: list[Path] = field(default_factory=list)
    records_merged: int = 0
    seconds: float = 0.0

    @property
    def removed(self) -> list[Entry]:
        return self.expired + self.evicted

    @property
    def bytes_after(self) -> int:
        return self.bytes_before - sum(e.size for e in self.removed)


class Housekeeper:
    def __init__(
        self,
        storage: FailSafeStorage,
        records: UseRecords,
        *,
        limit: CacheLimit | None,
        expire_unused: float | None,
        disk_path: Path | None = None,
        temp_dirs: tuple[Path, ...] = (),
        pins: BlobPins | None = None,
        pending: Callable[[], dict[str, float]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``disk_path``: the cache directory (None for S3), for limits relative to its disk.
        ``pending``: this process's uses not yet in storage."""
        self.storage = storage
        self.records = records
        self.limit = limit
        self.expire_unused = expire_unused
        self.disk_path = disk_path
        self.temp_dirs = temp_dirs
        self.pins = pins
        self._pending = pending
        self.clock = clock
        self.references = ManifestReferences()
        self.last: Inventory | None = None  # the latest inventory (status, metrics)
        self.last_at: float | None = None
        # One sweep or eviction at a time in a process; other processes are fine.
        self._busy = asyncio.Lock()

    @property
    def busy(self) -> bool:
        """Whether a sweep or an eviction pass is under way (its inventory is changing)."""
        return self._busy.locked()

    def disk(self) -> DiskSpace | None:
        if self.disk_path is None:
            return None
        try:
            return DiskSpace.of(self.disk_path)
        except OSError:
            return None

    def current_limit(self, cache_bytes: int) -> int | None:
        """The size limit now (it moves with the free space when it is relative to the disk)."""
        if self.limit is None:
            return None
        return size_limit(self.limit, cache_bytes, self.disk())

    async def inventory(self) -> Inventory:
        """The cache as it is now; raises SweepAborted when storage failed meanwhile."""
        errors = self.storage.errors
        pending = self._pending() if self._pending is not None else None
        inventory = await take_inventory(
            self.storage, self.records, self.references, pending=pending
        )
        if self.storage.errors != errors or self.storage.is_open:
            raise SweepAborted("storage failed while taking the inventory; nothing deleted")
        self.last, self.last_at = inventory, self.clock()
        return inventory

    async def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """Expire, evict down to the limit, merge the use records, remove orphaned files."""
        async with self._busy:
            started = time.perf_counter()
            report = SweepReport(dry_run=dry_run)
            inventory = await self.inventory()
            now = self.clock()
            report.entries, report.bytes_before = len(inventory.entries), inventory.bytes
            if self.expire_unused is not None:
                candidates = expired(inventory, now=now, window=self.expire_unused)
                report.expired = await self._remove(candidates, dry_run=dry_run)
                for entry in report.expired:
                    del inventory.entries[entry.key]
            await self._evict_over_limit(inventory, report, make_room=False, dry_run=dry_run)
            report.links = await self._remove(dangling_links(inventory, now=now), dry_run=dry_run)
            for entry in report.links:
                del inventory.entries[entry.key]
            report.fleet_records = await remove_dead_records(self.storage, now, dry_run=dry_run)
            if not dry_run:
                merged = await self.records.compact(
                    inventory.records, now, keep=inventory.entries.__contains__
                )
                report.records_merged = len(inventory.records.keys) if merged else 0
            report.temp_files = await asyncio.to_thread(self._temp_files, dry_run)
            report.seconds = time.perf_counter() - started
            return report

    async def evict(self, *, make_room: bool = False, dry_run: bool = False) -> SweepReport:
        """Evict down to the low-water mark if the cache is over its limit; with ``make_room``
        (the disk filled up) free at least a tenth of the cache whatever the limit says."""
        async with self._busy:
            started = time.perf_counter()
            report = SweepReport(dry_run=dry_run)
            inventory = await self.inventory()
            report.entries, report.bytes_before = len(inventory.entries), inventory.bytes
            await self._evict_over_limit(inventory, report, make_room=make_room, dry_run=dry_run)
            report.seconds = time.perf_counter() - started
            return report

    async def _evict_over_limit(
        self, inventory: Inventory, report: SweepReport, *, make_room: bool, dry_run: bool
    ) -> None:
        cache_bytes = inventory.bytes
        limit = self.current_limit(cache_bytes)
        report.limit = limit
        if make_room:
            target = int(min(limit if limit is not None else cache_bytes, cache_bytes) * LOW_WATER)
        elif limit is not None and cache_bytes > limit:
            target = int(limit * LOW_WATER)
        else:
            return
        candidates = choose_evictions(
            inventory, target_bytes=target, held=self._held, unused=self._speculative
        )
        report.held = sum(1 for e in inventory.of_kind(Kind.BLOB) if self._held(e))
        report.evicted = await self._remove(candidates, dry_run=dry_run)
        for entry in report.evicted:
            inventory.entries.pop(entry.key, None)

    def _speculative(self, entry: Entry) -> bool:
        return (
            self.pins is not None
            and entry.kind is Kind.BLOB
            and self.pins.is_speculative(entry.digest_hex)
        )

    def _held(self, entry: Entry) -> bool:
        return (
            self.pins is not None
            and entry.kind is Kind.BLOB
            and self.pins.is_held(entry.digest_hex)
        )

    async def _remove(self, entries: list[Entry], *, dry_run: bool) -> list[Entry]:
        """Delete ``entries`` (blobs first); returns those deleted (or, dry, that would be)."""
        if dry_run or not entries:
            return entries
        marked: list[str] = []
        going: list[Entry] = []
        for entry in entries:
            if entry.kind is Kind.BLOB and self.pins is not None:
                if not self.pins.begin_eviction(entry.digest_hex):
                    continue  # a client started reading it since the inventory
                marked.append(entry.digest_hex)
            going.append(entry)
        try:
            deleted = await self.storage.delete_many([e.key for e in going])
        finally:
            if self.pins is not None:
                for hex_digest in marked:
                    self.pins.end_eviction(hex_digest)
                    self.pins.claim(hex_digest)
        return going if deleted else []

    def _temp_files(self, dry_run: bool) -> list[Path]:
        found: list[Path] = []
        for directory in self.temp_dirs:
            with contextlib.suppress(OSError):  # not there (yet): nothing to remove
                found += remove_abandoned(directory, keep={MARKER}, dry_run=dry_run)
        return found
