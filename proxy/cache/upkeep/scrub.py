"""The scrub: cached blobs re-hashed in the background, at a bounded rate, and removed when wrong.

Every lookup of a blob already compares its size with the one it was committed with
(``proxy.storage.filesystem``), which catches a truncated or grown file at no cost. A byte changed
in place keeps the size: the client's pull then fails its digest check, and keeps failing until
the blob is gone. The scrub finds those: it reads every cached blob, hashes it, and removes one
that does not match its name (the next pull fetches it again, as after any miss).

It reads at most ``PROXY_CACHE_SCRUB_RATE`` bytes per second, so it never competes with clients
for the disk (8 MiB/s re-hashes 100 GiB in about 3.5 hours, for a few percent of one core), and
starts a pass at most once per ``PERIOD``: a small cache is not read over and over. The first
pass waits ``FIRST_DELAY`` after start-up. On by default for a cache directory (a disk can rot,
and nothing else would notice before builds fail); off by default on S3, whose objects cannot
change in place, where each read is a billed request and every instance would read the whole
bucket. ``registry-proxy cache verify`` does a whole pass at once, at full speed.

A blob that verifies but has no committed size recorded (written by an earlier version) gets
one (``Storage.verified``), so that reads check its size from then on.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from proxy.cache.keys import BLOBS
from proxy.storage import ObjectNotFound, StorageError
from proxy.storage.failsafe import FailSafeStorage

log = structlog.get_logger(__name__)

#: A pass starts at most this often (seconds): each blob is re-hashed about once a day.
PERIOD = 86400.0
#: The first pass starts this long after start-up (seconds).
FIRST_DELAY = 600.0


@dataclass(slots=True)
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    removed: list[str] = field(default_factory=list)
    unreadable: int = 0
    seconds: float = 0.0


class Scrubber:
    def __init__(
        self,
        storage: FailSafeStorage,
        *,
        rate: int,
        on_bytes: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``rate``: bytes per second at most; ``on_bytes`` hears how many were hashed."""
        self.storage = storage
        self.rate = rate
        self.on_bytes = on_bytes
        self.clock = clock
        self.sleep = sleep
        self.last: ScrubReport | None = None

    async def run(self) -> None:
        """Scrub every PERIOD until cancelled (a failing pass is logged; the next one comes)."""
        await self.sleep(FIRST_DELAY)
        while True:
            started = self.clock()
            try:
                await self.scrub()
            except StorageError as exc:
                log.warning("cache.scrub_failed", detail=str(exc))
            await self.sleep(max(0.0, started + PERIOD - self.clock()))

    async def scrub(self) -> ScrubReport:
        """One pass over every cached blob; StorageError when the blobs cannot be listed."""
        report = ScrubReport()
        started = self.clock()
        keys = [entry.key async for entry in self.storage.list_objects(BLOBS)]
        for key in keys:
            name = key.rsplit("/", 1)[1]
            hasher = hashlib.sha256()
            size = 0
            try:
                async for chunk in self.storage.read(key):
                    hasher.update(chunk)
                    size += len(chunk)
                    report.bytes += len(chunk)
                    if self.on_bytes is not None:
                        self.on_bytes(len(chunk))
                    await self._pace(report.bytes, started)
            except ObjectNotFound:
                continue  # evicted or expired meanwhile
            except StorageError:
                report.unreadable += 1  # never judged: the storage's failure is counted there
                continue
            report.checked += 1
            if hasher.hexdigest() == name:
                await self.storage.verified(key, size)
                continue
            await self.storage.delete(key)
            report.removed.append(key)
            self.storage.corrupt(f"{key}: content hashes to sha256:{hasher.hexdigest()}", "scrub")
        report.seconds = self.clock() - started
        self.last = report
        if report.removed or report.unreadable:
            log.info(
                "cache.scrubbed",
                checked=report.checked,
                bytes=report.bytes,
                removed=len(report.removed),
                unreadable=report.unreadable,
                seconds=round(report.seconds, 1),
            )
        return report

    async def _pace(self, done: int, started: float) -> None:
        """Sleep while more than ``rate`` bytes per second were read since ``started``."""
        ahead = done / self.rate - (self.clock() - started)
        if ahead > 0:
            await self.sleep(ahead)
