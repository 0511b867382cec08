"""When each cache entry was last served, known to every instance at little cost.

A hit costs a dict assignment (``LastUse.touch``). Every interval the instance writes what it
recorded as one small record object (a few for a huge batch), never one write per request:

    access/<unix seconds>-<instance id>-<n>     JSON {"version": 1, "uses": {key: seconds}}

(the instance id is the process's one identity, ``proxy.ops.fleet.new_instance_id``, passed in).

The time an entry was last served, by any instance, is the latest time any record holds for its
key (``UseRecords.read``). Records accumulate between sweeps; a sweep merges them
(``UseRecords.compact``): it reads them, writes one record holding their union, and only then
deletes exactly the records it read. Sweepers running at once cannot lose a time: no record is
deleted before another one holding everything it held has been written (at worst two merged
records exist side by side until the next sweep). An instance that dies loses what it recorded
since its last flush: at most one interval.

Times are whole wall-clock seconds: they are compared across instances and with the times
storage reports for writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from proxy.storage.failsafe import FailSafeStorage

log = structlog.get_logger(__name__)

RECORDS = "access/"
#: A record never holds more uses than this, so even a huge batch is a few small writes.
MAX_USES_PER_RECORD = 50_000
FORMAT_VERSION = 1


@dataclass(slots=True)
class RecordSet:
    """Every record read at one moment: the latest use per key, and what was read."""

    uses: dict[str, float] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    bytes: int = 0

    def merge(self, uses: dict[str, float]) -> None:
        mine = self.uses
        for key, when in uses.items():
            if when > mine.get(key, 0.0):
                mine[key] = when


class UseRecords:
    """The records in storage: written in batches, read and merged by sweeps."""

    def __init__(self, storage: FailSafeStorage, instance: str) -> None:
        self._storage = storage
        self.instance = instance
        self._sequence = 0

    async def write(self, uses: dict[str, float], now: float) -> bool:
        """Store ``uses`` as one record per MAX_USES_PER_RECORD keys; False if any write failed
        (the records that were written stay: they only ever hold true times)."""
        items = sorted(uses.items())
        for start in range(0, len(items), MAX_USES_PER_RECORD):
            batch = dict(items[start : start + MAX_USES_PER_RECORD])
            self._sequence += 1
            key = f"{RECORDS}{int(now):010d}-{self.instance}-{self._sequence}"
            body = json.dumps({"version": FORMAT_VERSION, "uses": batch}, separators=(",", ":"))
            if not await self._storage.put(key, body.encode(), overwrite=True):
                return False
        return True

    async def read(self) -> RecordSet:
        """Every record, merged. Raises StorageError when they cannot be listed; a record that
        vanished meanwhile (merged by another sweeper) is skipped: its times are in the newer
        record that sweeper wrote first."""
        found = RecordSet()
        async for entry in self._storage.list_objects(RECORDS):
            got = await self._storage.get(entry.key)
            if got is None:
                continue
            uses = _parse(got[0])
            if uses is None:
                log.warning("lastuse.bad_record", key=entry.key)
            else:
                found.merge(uses)
            found.keys.append(entry.key)
            found.bytes += entry.size
        return found

    async def compact(
        self, records: RecordSet, now: float, keep: Callable[[str], bool] | None = None
    ) -> bool:
        """Replace ``records`` (as ``read`` returned them) by one merged record of the uses
        ``keep`` accepts (entries no longer cached are dropped). False when the merged record
        could not be written: then nothing is deleted.

        The merged record is written even when there was only one: a fresh record is what
        keeps the bucket's age-based lifecycle rule for ``access/`` from expiring live times.
        """
        uses = records.uses if keep is None else {k: t for k, t in records.uses.items() if keep(k)}
        if uses and not await self.write(uses, now):
            return False
        # Names are unique (instance id and sequence), so none of the records just written is
        # among those read before.
        return await self._storage.delete_many(records.keys)


def _parse(data: bytes) -> dict[str, float] | None:
    try:
        document = json.loads(data)
        uses = document["uses"]
        if not isinstance(uses, dict):
            return None
        return {str(k): float(v) for k, v in uses.items()}
    except (ValueError, KeyError, TypeError):
        return None


class LastUse:
    """Hits recorded in memory, flushed to ``UseRecords`` in batches.

    ``touch`` is on the request path: one clock read and one dict assignment. ``flush`` runs
    every interval from the background housekeeping (and at shutdown).
    """

    def __init__(self, records: UseRecords, *, clock: Callable[[], float] = time.time) -> None:
        self.records = records
        self._clock = clock
        self._pending: dict[str, float] = {}
        self.enabled = True  # PROXY_CACHE_RECORD_ACCESS (off only to measure what it costs)

    def touch(self, key: str) -> None:
        if self.enabled:
            self._pending[key] = self._clock()

    @property
    def pending(self) -> dict[str, float]:
        """Uses recorded since the last successful flush (for this instance's own sweeps)."""
        return self._pending

    async def flush(self) -> bool:
        """Write what was recorded since the last flush; on failure keep it for the next one."""
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        try:
            written = await self.records.write(batch, self._clock())
        except BaseException:
            self._keep(batch)  # cancelled (shutting down): the final flush writes it
            raise
        if not written:
            self._keep(batch)
        return written

    def _keep(self, batch: dict[str, float]) -> None:
        """Put an unwritten batch back, without overwriting newer times recorded meanwhile."""
        for key, when in batch.items():
            if when > self._pending.get(key, 0.0):
                self._pending[key] = when
