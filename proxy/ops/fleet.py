"""Fleet-wide figures: each instance publishes its own, any instance can add them up.

Several stateless tasks share one storage (S3). Each publishes one small JSON record,
``status/instances/<instance id>``, every ``interval`` seconds (one write per instance per
interval, never one per request), and removes it when it stops cleanly. ``view()`` reads every
record, drops those not refreshed for ``EXPIRE_INTERVALS`` intervals (a task that died), and sums
them, so ``/status`` on any instance shows the whole fleet: counted pulls against the one
account's quota above all. The view is cached for a few seconds, so a status page polling it does
not turn into a storage listing per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

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
MAX_INSTANCES = 200

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
        self._others: tuple[bool, list[dict[str, Any]]] | None = None
        self._others_at = float("-inf")

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
        complete, others = self._others
        instances = sorted([self.record(), *others], key=lambda r: str(r["instance"]))
        return {"complete": complete, "instances": instances, "totals": total(instances)}

    def forget_view(self) -> None:
        """Read the other instances' records again on the next view."""
        self._others = None

    async def _read_others(self) -> tuple[bool, list[dict[str, Any]]]:
        try:
            keys = [key async for key in self._storage.keys(INSTANCE_PREFIX)][:MAX_INSTANCES]
        except StorageError:
            return False, []
        oldest = self.clock() - EXPIRE_INTERVALS * self.interval
        records = []
        for key in keys:
            if key == self._key:
                continue
            found = await self._storage.get(key)
            record = _parse(found[0]) if found else None
            if record is not None and record["published_at"] >= oldest:
                records.append(record)
        return True, records


def _parse(data: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        record = json.loads(data)
        if (
            isinstance(record, dict)
            and isinstance(record.get("instance"), str)
            and isinstance(record.get("published_at"), int | float)
        ):
            return record
    return None


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
