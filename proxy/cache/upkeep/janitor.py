"""The cache's housekeeping inside the server: one background task, never on the request path.

- Every ``FLUSH_INTERVAL`` it writes the uses recorded since the last time (``LastUse.flush``).
- Every ``CHECK_INTERVAL``, when the cache has a size limit, it compares the size (known from the
  last inventory plus what was stored since: no listing) with the limit (which moves with the
  disk's free space when it is relative to it), and takes an inventory and evicts only when the
  cache is over. A blob stored past the limit, or a write that found the disk full, wakes it at
  once.
- Every ``PROXY_CACHE_SWEEP_INTERVAL`` (with some jitter, so instances on one bucket spread out)
  it sweeps: expiry, eviction, record merging, orphaned temporary files.
- With ``PROXY_CACHE_SCRUB_RATE``, a second task re-hashes cached blobs at that rate
  (``proxy.cache.upkeep.scrub``).

A failing pass is logged and retried at the next occasion; housekeeping never stops the server.
Stopping flushes the uses one last time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import structlog

from proxy.cache.upkeep.housekeeping import Housekeeper, SweepReport
from proxy.cache.upkeep.lastuse import LastUse
from proxy.cache.upkeep.scrub import Scrubber
from proxy.concurrency.waits import wait_at_most
from proxy.ops.metrics import CacheHousekeepingMetrics
from proxy.storage import StorageError

log = structlog.get_logger(__name__)

FLUSH_INTERVAL = 60.0
CHECK_INTERVAL = 10.0
# The first sweep comes soon after start-up; later ones every sweep interval.
FIRST_SWEEP_DELAY = 60.0
SWEEP_JITTER = 0.1
LOG_INTERVAL = 300.0


class Janitor:
    def __init__(
        self,
        housekeeper: Housekeeper,
        last_use: LastUse,
        *,
        sweep_interval: float,
        metrics: CacheHousekeepingMetrics | None = None,
        scrubber: Scrubber | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        check_interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.housekeeper = housekeeper
        self.last_use = last_use
        self.sweep_interval = sweep_interval
        self.flush_interval = flush_interval
        self.check_interval = check_interval
        self.metrics = metrics
        self._clock = clock
        self._wake = asyncio.Event()
        self._room_needed = False
        self._stored_since_scan = 0
        self._task: asyncio.Task[None] | None = None
        self.scrubber = scrubber
        self._scrub_task: asyncio.Task[None] | None = None
        self._failed_logged_at: float | None = None
        self.last_sweep: SweepReport | None = None

    # --- hooks: cheap, called from the request path ---------------------------------------------

    def stored(self, size: int) -> None:
        """A blob of ``size`` bytes was stored: wake up if that takes the cache over its limit."""
        self._stored_since_scan += size
        if self._over_limit():
            self._wake.set()

    def make_room(self) -> None:
        """The disk filled up: evict now."""
        self._room_needed = True
        self._wake.set()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cache janitor")
        if self.scrubber is not None:
            self._scrub_task = asyncio.create_task(self.scrubber.run(), name="cache scrub")

    async def stop(self) -> None:
        for task in (self._scrub_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._scrub_task = None
        await self.last_use.flush()

    # --- state ----------------------------------------------------------------------------------

    @property
    def estimated_bytes(self) -> int | None:
        last = self.housekeeper.last
        return None if last is None else last.bytes + self._stored_since_scan

    def limit_now(self) -> int | None:
        """The cache's size limit now (None: none), as the next pass would see it."""
        if self.housekeeper.limit is None:
            return None
        return self.housekeeper.current_limit(self.estimated_bytes or 0)

    def speculative_bytes(self) -> int:
        """Bytes of prefetched blobs no client asked for yet (``proxy.cache.upkeep.pins``)."""
        pins = self.housekeeper.pins
        return 0 if pins is None else pins.speculative_bytes

    def _over_limit(self) -> bool:
        size = self.estimated_bytes
        if size is None or self.housekeeper.limit is None:
            return False
        limit = self.housekeeper.current_limit(size)
        return limit is not None and size > limit

    def status(self) -> dict[str, Any]:
        """For /status: the cache's size (as of the last inventory, plus what was stored since)
        and its limits."""
        inventory = self.housekeeper.last
        size = self.estimated_bytes
        return {
            "bytes": size,
            "entries": None
            if inventory is None
            else {kind.value: count for kind, (count, _) in inventory.totals().items()},
            "limit_bytes": None if size is None else self.housekeeper.current_limit(size),
            "expire_unused_seconds": self.housekeeper.expire_unused,
            "last_sweep_seconds": None if self.last_sweep is None else self.last_sweep.seconds,
        }

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        now = self._clock()
        next_flush = now + self.flush_interval
        next_check = now  # an inventory at start: the size is unknown until then
        next_sweep = now + min(FIRST_SWEEP_DELAY, self.sweep_interval)
        while True:
            timeout = max(0.0, min(next_flush, next_check, next_sweep) - self._clock())
            await wait_at_most(timeout, self._wake.wait())
            self._wake.clear()
            now = self._clock()
            if now >= next_flush:
                await self.last_use.flush()
                next_flush = now + self.flush_interval
            if now >= next_sweep:
                await self._guarded("sweep", self.sweep)
                jitter = 1 + random.uniform(-SWEEP_JITTER, SWEEP_JITTER)
                next_sweep = self._clock() + self.sweep_interval * jitter
                next_check = self._clock() + self.check_interval
            elif (
                self._room_needed
                or self._over_limit()
                or (now >= next_check and self.housekeeper.last is None)
            ):
                # A full inventory only when needed: at start (the size is unknown), when the
                # estimate is over the limit (which follows the disk's free space), or when the
                # disk filled up. Sweeps take a fresh inventory every sweep interval anyway.
                await self._guarded("evict", self.evict)
                next_check = self._clock() + self.check_interval
            elif now >= next_check:
                next_check = now + self.check_interval

    async def _guarded(self, what: str, call: Callable[[], Any]) -> None:
        try:
            await call()
        except asyncio.CancelledError:
            raise
        except StorageError as exc:
            self._log_failure(what, str(exc))
        except Exception as exc:  # a bug in housekeeping must not stop the server
            log.exception("cache.housekeeping_failed", operation=what, error=repr(exc))

    def _log_failure(self, what: str, detail: str) -> None:
        now = self._clock()
        if self._failed_logged_at is None or now - self._failed_logged_at >= LOG_INTERVAL:
            self._failed_logged_at = now
            log.warning("cache.housekeeping_failed", operation=what, detail=detail)

    async def evict(self) -> SweepReport | None:
        """One eviction pass if the cache has a limit or the disk filled up."""
        room_needed, self._room_needed = self._room_needed, False
        if self.housekeeper.limit is None and not room_needed:
            return None
        await self.last_use.flush()
        self._stored_since_scan = 0
        report = await self.housekeeper.evict(make_room=room_needed)
        self._observe("evict", report)
        self._recheck_after_pass()
        return report

    def _recheck_after_pass(self) -> None:
        # Blobs stored while a pass ran were measured against the old inventory and could not
        # wake the loop; against the new one they may put the cache over its limit. One more
        # pass then, at once: bounded, since it takes new blobs stored during a pass.
        if self._stored_since_scan and self._over_limit():
            self._wake.set()

    async def sweep(self) -> SweepReport:
        await self.last_use.flush()
        self._stored_since_scan = 0
        self._room_needed = False
        report = await self.housekeeper.sweep()
        self.last_sweep = report
        self._observe("sweep", report)
        self._recheck_after_pass()
        return report

    def _observe(self, operation: str, report: SweepReport) -> None:
        if report.removed or report.temp_files or report.links or report.fleet_records:
            log.info(
                "cache.swept" if operation == "sweep" else "cache.evicted",
                expired=len(report.expired),
                evicted=len(report.evicted),
                bytes_freed=report.bytes_before - report.bytes_after,
                bytes=report.bytes_after,
                limit=report.limit,
                held_by_clients=report.held,
                dangling_links=len(report.links),
                fleet_records=len(report.fleet_records),
                temp_files=len(report.temp_files),
                seconds=round(report.seconds, 3),
            )
        metrics = self.metrics
        if metrics is None:
            return
        metrics.sweep_duration.labels(operation).observe(report.seconds)
        for entry in report.expired:
            metrics.expiries.labels(entry.kind.value).inc()
            metrics.expired_bytes.labels(entry.kind.value).inc(entry.size)
        for entry in report.evicted:
            metrics.evictions.labels(entry.kind.value).inc()
            metrics.evicted_bytes.labels(entry.kind.value).inc(entry.size)
        inventory = self.housekeeper.last
        if inventory is not None:
            for kind, (count, size) in inventory.totals().items():
                metrics.entries.labels(kind.value).set(count)
                metrics.bytes.labels(kind.value).set(size)
        metrics.limit.set(report.limit or 0)
