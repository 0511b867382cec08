"""Fleet records (proxy/ops/fleet.py): totals over every instance's figures, one record per live
instance however many, dead instances' records removed by sweeps and ``cache gc``, and records
that are malformed or from the future skipped and counted (reached through ``/status`` and the
page, which are what answered 500 on one of them)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from support.clock import Clock
from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory, cache_command
from support.settings import settings_with

from proxy.cache.upkeep.housekeeping import Housekeeper
from proxy.cache.upkeep.lastuse import UseRecords
from proxy.config_values import StorageLocation
from proxy.http.routes import SERVICES
from proxy.ops.activity import Activity
from proxy.ops.fleet import INSTANCE_PREFIX, Fleet, new_instance_id, total
from proxy.storage.base import KEY_RE
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage
from proxy.upstream.client import RateLimit


def test_totals_add_counters_and_keep_the_latest_reading() -> None:
    clock = Clock(1_800_000_000.0)
    one, two = Activity(clock=clock), Activity(clock=clock)
    one.cache_result("hit")
    one.cache_result("miss")
    two.cache_result("hit")
    two.cache_result("stale")
    one.counted_pull("docker.io")
    two.counted_pull("docker.io")
    one.rate_limit("docker.io", RateLimit(100, 90, 21600, "1.2.3.4"), counted=False)
    clock.now += 30
    two.rate_limit("docker.io", RateLimit(100, 80, 21600, "1.2.3.4"), counted=False)
    one.pulled("library/golang")
    two.pulled("library/golang")
    two.pulled("library/alpine")
    records = [
        {"instance": "a", **one.snapshot(), "downloads": [{"digest": "sha256:x", "bytes": 1}]},
        {"instance": "b", **two.snapshot()},
    ]
    summed = total(records)
    assert summed["instances"] == 2
    assert (summed["hits"], summed["misses"], summed["stale"]) == (2, 1, 1)
    assert summed["hit_ratio"] == 3 / 4  # stale answers are served from the cache too
    hub = summed["upstreams"]["docker.io"]
    assert hub["counted_pulls"] == 2
    assert hub["ratelimit"]["remaining"] == 80  # the latest reading, not a sum
    assert sum(hub["pulls_by_minute"].values()) == 2
    assert summed["repositories"][0] == {"repository": "library/golang", "pulls": 2}
    assert summed["downloads"] == [{"digest": "sha256:x", "bytes": 1, "instance": "a"}]


def test_instance_ids_are_storage_keys() -> None:
    assert KEY_RE.fullmatch("status/instances/" + new_instance_id())


# --- records in storage (issue 21, item 10) -----------------------------------------------------


async def open_store(root: Path) -> tuple[FilesystemStorage, FailSafeStorage]:
    storage = FilesystemStorage(root)
    await storage.open()
    return storage, FailSafeStorage(storage, cooldown=0)


def record(name: str, published_at: float, **fields: Any) -> bytes:
    return json.dumps({"instance": name, "published_at": published_at, **fields}).encode()


async def put_record(
    storage: FilesystemStorage, name: str, data: bytes, written: float | None = None
) -> None:
    await storage.put(INSTANCE_PREFIX + name, data, overwrite=True)
    if written is not None:
        os.utime(storage.data_dir / (INSTANCE_PREFIX + name), (written, written))


async def test_every_live_instance_is_listed_however_many(tmp_path: Path) -> None:
    """No cap drops a live instance (past 200 one was dropped while ``complete`` stayed true)."""
    storage, safe = await open_store(tmp_path)
    now = time.time()
    for number in range(250):
        await put_record(storage, f"live-{number:03d}", record(f"live-{number:03d}", now - 30))
    fleet = Fleet(safe, Activity(), dict, instance_id="me")
    view = await fleet.view()
    assert view["complete"] is True
    assert len(view["instances"]) == 251 and view["totals"]["instances"] == 251


async def test_dead_instances_records_are_removed_by_sweeps_and_gc(tmp_path: Path) -> None:
    """A task that died (SIGKILL, replaced) never withdrew its record: after a few intervals
    without a write it is deleted, by the servers' sweeps and by ``cache gc``."""
    storage, safe = await open_store(tmp_path / "cache")
    now = time.time()
    await put_record(storage, "dead", record("dead", now - 3600), written=now - 3600)
    await put_record(storage, "live", record("live", now - 10))
    keeper = Housekeeper(safe, UseRecords(safe, "x"), limit=None, expire_unused=None)
    assert (await keeper.sweep(dry_run=True)).fleet_records == [INSTANCE_PREFIX + "dead"]
    report = await keeper.sweep()
    assert report.fleet_records == [INSTANCE_PREFIX + "dead"]
    assert sorted(os.listdir(storage.data_dir / INSTANCE_PREFIX)) == ["live"]
    # cache gc is the same sweep
    await put_record(storage, "dead2", record("dead2", now - 999), written=now - 999)
    settings = settings_with(
        location=StorageLocation(path=tmp_path / "cache"), spool_dir=tmp_path / "s"
    )
    status, text = await cache_command(settings, "gc")
    assert status == 0 and f"deleted fleet record {INSTANCE_PREFIX}dead2" in text
    assert sorted(os.listdir(storage.data_dir / INSTANCE_PREFIX)) == ["live"]


async def test_a_malformed_or_future_record_is_skipped_and_counted(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """A wrong type in one field made /status and / answer 500; a future published_at kept a
    record listed for ever. Both are skipped, and the view says how many it skipped."""
    client = await make_proxy(fakehub)
    services = client.app[SERVICES]
    inner = services.storage.inner
    assert isinstance(inner, FilesystemStorage)
    now = time.time()
    bad = {
        "hits-a-string": record("a", now, hits="lots"),
        "upstreams-a-list": record("b", now, upstreams=["docker.io"]),
        "pulls-not-numbers": record(
            "c", now, upstreams={"docker.io": {"pulls_by_minute": {"1": "x"}}}
        ),
        "repositories-nested": record("d", now, repositories={"x": {"y": 1}}),
        "events-not-dicts": record("e", now, recent_stale=["boom"]),
        "downloads-bad": record("f", now, downloads=[{"bytes": "many"}]),
        "future": record("g", now + 86400 * 365),
        "not-json": b"\xff{",
    }
    for name, data in bad.items():
        await put_record(inner, name, data)
    await put_record(inner, "good", record("good", now, hits=3))
    services.fleet.forget_view()
    for path in ("/status", "/"):
        response = await client.get(path)
        assert response.status == 200, (path, await response.text())
    status = await (await client.get("/status")).json()
    assert sorted(i["instance"] for i in status["instances"]) == sorted(
        ["good", services.fleet.instance_id]
    )
    assert status["fleet"]["skipped_records"] == len(bad)
    assert status["fleet"]["hits"] == 3
