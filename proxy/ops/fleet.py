"""Fleet-wide figures: each instance publishes its own, any instance can add them up.

Several stateless tasks share one storage (S3). Each publishes one small JSON record,
``status/instances/<instance id>``, every ``interval`` seconds (one write per instance per
interval, never one per request), and removes it when it stops cleanly. ``view()`` lists the
records and reads those written within ``EXPIRE_INTERVALS`` intervals (the storage's own time of
the write decides: a task that died stopped writing), and sums them, so ``/status`` on any
instance shows the whole fleet: counted pulls against the one account's quota above all. The
view is cached for a few seconds, so a status page polling it does not turn into a storage
listing per poll. Every live instance is shown: there is no cap (only live records are read, at
most ``READ_CONCURRENCY`` at once).

Records are data from storage, not code's own: each is checked field by field (``_parse``) and
one that does not have the shape this code writes, or that claims to be published in the future,
is skipped and counted (``skipped_records`` in the totals), never a 500 and never listed for ever.
Records of instances that stopped reporting (SIGKILL, a replaced task: nothing withdrew them)
are deleted by the sweeps and ``cache gc`` (``remove_dead_records``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import cachetools
import structlog

from proxy.ops.activity import RECENT_EVENTS, TOP_REPOSITORIES, Activity
from proxy.storage import StorageError
from proxy.storage.failsafe import FailSafeStorage

log = structlog.get_logger(__name__)

INSTANCE_PREFIX = "status/instances/"
PUBLISH_INTERVAL = 60.0
# A record not refreshed for this many intervals belongs to an instance that is gone.
EXPIRE_INTERVALS = 3
VIEW_CACHE_SECONDS = 5.0
# Records read at once when adding up the fleet.
READ_CONCURRENCY = 16
# Clocks differ: a record may be this far ahead of ours (seconds) and still be listed.
CLOCK_SKEW = 60.0
# Malformed records logged once per key, at most this many keys remembered.
LOGGED_KEYS = 1000

LiveFigures = Callable[[], dict[str, Any]]


def new_instance_id() -> str:
    """``<host>-<pid>-<random>``: unique per process, readable in the page.

    A process has one: it names the instance's fleet record (``status/instances/<id>``) and its
    last-use records (``access/<seconds>-<id>-<n>``, proxy.cache.upkeep.lastuse)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40].lstrip(".-") or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Fleet:
    def __init__(
        self,
        storage: FailSafeStorage,
        activity: Activity,
        live: LiveFigures,
        *,
        interval: float = PUBLISH_INTERVAL,
        clock: Callable[[], float] = time.time,
        instance_id: str | None = None,
    ) -> None:
        self._storage = storage
        self._activity = activity
        self._live = live
        self.interval = interval
        self.clock = clock
        self.instance_id = instance_id or new_instance_id()
        self._key = INSTANCE_PREFIX + self.instance_id
        self._others: tuple[bool, list[dict[str, Any]], int] | None = None
        self._others_at = float("-inf")
        self._logged: cachetools.LRUCache[str, bool] = cachetools.LRUCache(LOGGED_KEYS)

    # --- publishing -----------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """This instance's record, as published (its live figures as of now)."""
        return {
            "instance": self.instance_id,
            "published_at": self.clock(),
            **self._activity.snapshot(),
            **self._live(),
        }

    async def publish(self) -> None:
        """Write this instance's record (a failing storage only means it is not published)."""
        await self._storage.put(self._key, json.dumps(self.record()).encode(), overwrite=True)

    async def run(self) -> None:
        """Publish every interval until cancelled."""
        while True:
            await self.publish()
            await asyncio.sleep(self.interval)

    async def withdraw(self) -> None:
        """Remove this instance's record (a clean stop drops out at once)."""
        await self._storage.delete(self._key)

    # --- reading --------------------------------------------------------------------------------

    async def view(self) -> dict[str, Any]:
        """Every live instance's record and their sum.

        This instance's own figures are always current; the others' records are read from
        storage at most every VIEW_CACHE_SECONDS (a polling page must not list S3 each time).
        """
        now = time.monotonic()
        if self._others is None or now - self._others_at > VIEW_CACHE_SECONDS:
            self._others = await self._read_others()
            self._others_at = now
        complete, others, skipped = self._others
        instances = sorted([self.record(), *others], key=lambda r: str(r["instance"]))
        totals = {**total(instances), "skipped_records": skipped}
        return {"complete": complete, "instances": instances, "totals": totals}

    def forget_view(self) -> None:
        """Read the other instances' records again on the next view."""
        self._others = None

    async def _read_others(self) -> tuple[bool, list[dict[str, Any]], int]:
        """(every live record could be listed, the valid ones, how many were skipped)."""
        now = self.clock()
        oldest = now - EXPIRE_INTERVALS * self.interval
        try:
            keys = [
                listed.key
                async for listed in self._storage.list_objects(INSTANCE_PREFIX)
                if listed.key != self._key and listed.modified >= oldest
            ]
        except StorageError:
            return False, [], 0
        slots = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(key: str) -> dict[str, Any] | bool | None:
            async with slots:
                found = await self._storage.get(key)
            if found is None:
                return False  # gone meanwhile (withdrawn), or not readable now
            record = _parse(found[0])
            if record is None or not oldest <= record["published_at"] <= now + CLOCK_SKEW:
                if key not in self._logged:
                    self._logged[key] = True
                    log.warning("fleet.record_skipped", key=key, note="malformed or not current")
                return None
            return record

        results = await asyncio.gather(*(read(key) for key in keys))
        records = [r for r in results if isinstance(r, dict)]
        return True, records, sum(1 for r in results if r is None)


async def remove_dead_records(
    storage: FailSafeStorage, now: float, *, interval: float = PUBLISH_INTERVAL, dry_run: bool
) -> list[str]:
    """Delete (or, dry, list) the records not written for EXPIRE_INTERVALS intervals: their
    instances stopped without withdrawing them. Raises StorageError when they cannot be listed."""
    oldest = now - EXPIRE_INTERVALS * interval
    dead = [
        listed.key
        async for listed in storage.list_objects(INSTANCE_PREFIX)
        if listed.modified < oldest
    ]
    if dead and not dry_run and not await storage.delete_many(dead):
        return []
    return dead


_COUNTERS = ("hits", "misses", "stale", "bytes_from_cache", "bytes_from_upstream")


def _parse(data: bytes) -> dict[str, Any] | None:
    """The record if it has the shape ``Fleet.record`` writes (fields it does not know are
    dropped); None when anything in it has another type."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    try:
        return _checked(raw)
    except _Malformed:
        return None


class _Malformed(Exception):
    pass


def _checked(raw: object) -> dict[str, Any]:
    record = _dict(raw)
    published = record.get("published_at")
    if not _number(published) or not isinstance(record.get("instance"), str):
        raise _Malformed
    started = record.get("started_at")
    checked: dict[str, Any] = {
        "instance": record["instance"],
        "published_at": published,
        "started_at": started if _number(started) else None,
        **{name: _count(record.get(name, 0)) for name in _COUNTERS},
        "upstreams": {
            _text(host): _upstream(figures)
            for host, figures in _dict(record.get("upstreams") or {}).items()
        },
        "repositories": {
            _text(name): _count(pulls)
            for name, pulls in _dict(record.get("repositories") or {}).items()
        },
        "recent_stale": [_event(e) for e in _list(record.get("recent_stale") or [])],
        "recent_errors": [_event(e) for e in _list(record.get("recent_errors") or [])],
        "downloads": [_download(d) for d in _list(record.get("downloads") or [])],
    }
    return checked


def _upstream(raw: object) -> dict[str, Any]:
    figures = _dict(raw)
    reading = figures.get("ratelimit")
    ratelimit = None
    if reading is not None:
        ratelimit = _dict(reading)
        if not _number(ratelimit.get("at")):
            raise _Malformed
        for name in ("limit", "remaining", "window"):
            if ratelimit.get(name) is not None:
                _count(ratelimit[name])
    minutes = {}
    for minute, count in _dict(figures.get("pulls_by_minute") or {}).items():
        if not _text(minute).isdigit():
            raise _Malformed
        minutes[minute] = _count(count)
    return {
        "counted_pulls": _count(figures.get("counted_pulls", 0)),
        "errors": _count(figures.get("errors", 0)),
        "ratelimit": ratelimit,
        "pulls_by_minute": minutes,
    }


def _event(raw: object) -> dict[str, Any]:
    event = _dict(raw)
    if not _number(event.get("at")):
        raise _Malformed
    if any(not isinstance(v, str | int | float | type(None)) for v in event.values()):
        raise _Malformed
    return event


def _download(raw: object) -> dict[str, Any]:
    download = _dict(raw)
    size = download.get("size")
    return {
        "digest": _text(download.get("digest", "")),
        "repository": _text(download.get("repository", "")),
        "bytes": _count(download.get("bytes", 0)),
        "size": None if size is None else _count(size),
    }


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Malformed
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Malformed
    return value


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def total(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several instances' records (counters added, readings: the latest one)."""
    sums = {
        name: sum(int(r.get(name) or 0) for r in records)
        for name in ("hits", "misses", "stale", "bytes_from_cache", "bytes_from_upstream")
    }
    upstreams: dict[str, dict[str, Any]] = {}
    repositories: Counter[str] = Counter()
    stale: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    downloads: list[dict[str, Any]] = []
    for record in records:
        instance = record["instance"]
        for host, figures in (record.get("upstreams") or {}).items():
            into = upstreams.setdefault(
                host, {"counted_pulls": 0, "errors": 0, "ratelimit": None, "pulls_by_minute": {}}
            )
            into["counted_pulls"] += int(figures.get("counted_pulls") or 0)
            into["errors"] += int(figures.get("errors") or 0)
            reading = figures.get("ratelimit")
            if reading and (into["ratelimit"] is None or reading["at"] > into["ratelimit"]["at"]):
                into["ratelimit"] = reading
            minutes = into["pulls_by_minute"]
            for minute, count in (figures.get("pulls_by_minute") or {}).items():
                minutes[minute] = minutes.get(minute, 0) + int(count)
        repositories.update({k: int(v) for k, v in (record.get("repositories") or {}).items()})
        stale += [{**event, "instance": instance} for event in record.get("recent_stale") or []]
        errors += [{**event, "instance": instance} for event in record.get("recent_errors") or []]
        downloads += [{**d, "instance": instance} for d in record.get("downloads") or []]
    looked_up = sums["hits"] + sums["misses"] + sums["stale"]
    return {
        "instances": len(records),
        **sums,
        "hit_ratio": (sums["hits"] + sums["stale"]) / looked_up if looked_up else None,
        "upstreams": upstreams,
        "repositories": [
            {"repository": name, "pulls": count}
            for name, count in repositories.most_common(TOP_REPOSITORIES)
        ],
        "recent_stale": sorted(stale, key=lambda e: -e["at"])[:RECENT_EVENTS],
        "recent_errors": sorted(errors, key=lambda e: -e["at"])[:RECENT_EVENTS],
        "downloads": downloads,
    }
