"""A full disk is a capacity event, not an outage: count it, say so once per interval, make room.

The cache storage (through ``FailSafeStorage.on_full``) and the download spool (``SpoolBuffer``)
report here when a write finds no room (ENOSPC, EDQUOT). What was being written is simply not
kept: downloads go on streaming to their clients, and the instance stays ready. Each report is
counted; the log gets one line per ``LOG_INTERVAL`` however many writes failed; and the evictor
is woken to make room.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

LOG_INTERVAL = 30.0


class DiskFullAlarm:
    def __init__(
        self,
        *,
        on_event: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_event = on_event  # metrics: one call per event, with where it happened
        self.make_room: Callable[[], None] | None = None  # the evictor's wake-up, once it runs
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0
        self.events = 0

    def report(self, where: str, detail: str) -> None:
        """A write to ``where`` ("storage" or "spool") found the disk full."""
        self.events += 1
        self._unlogged += 1
        if self.on_event is not None:
            self.on_event(where)
        if self.make_room is not None:
            self.make_room()
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL:
            log.warning(
                "disk.full",
                where=where,
                detail=detail,
                events=self._unlogged,
                note="streaming without caching; evicting to make room",
            )
            self._logged_at = now
            self._unlogged = 0
