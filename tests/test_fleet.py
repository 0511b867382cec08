"""Fleet records (proxy/ops/fleet.py) and per-instance activity (proxy/ops/activity.py)."""

from __future__ import annotations

from conftest import ProxyFactory
from support.fakehub import FakeHub

from proxy.config_values import human_bytes
from proxy.http.routes import SERVICES
from proxy.ops.activity import HISTORY_MINUTES, MAX_REPOSITORIES, Activity
from proxy.ops.fleet import new_instance_id, total
from proxy.ops.status_page import ago, human_count, percent
from proxy.storage.base import KEY_RE
from proxy.upstream.client import RateLimit


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_totals_add_counters_and_keep_the_latest_reading() -> None:
    clock = Clock()
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


def test_activity_stays_bounded() -> None:
    clock = Clock()
    activity = Activity(clock=clock)
    for number in range(MAX_REPOSITORIES * 3):
        activity.pulled(f"scan/name{number}")
    assert len(activity.repositories) <= MAX_REPOSITORIES
    for _ in range(HISTORY_MINUTES * 2):
        activity.counted_pull("docker.io")
        clock.now += 60
    assert len(activity.upstreams["docker.io"].pulls_by_minute) <= HISTORY_MINUTES + 1
    for number in range(100):
        activity.upstream_failed("docker.io", "GET", 503 + number % 2)
    assert len(activity.recent_errors) == 20


def test_instance_ids_are_storage_keys() -> None:
    assert KEY_RE.fullmatch("status/instances/" + new_instance_id())


def test_figures_for_people() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1234) == "1.21 KiB"
    assert human_bytes(1_200_000_000) == "1.12 GiB"
    assert human_bytes(None) == "\u2013"
    assert human_count(1234567) == "1\u202f234\u202f567"
    assert percent(0.538) == "53.8 %"
    now = 10_000.0
    assert ago(now - 2, now) == "just now"
    assert ago(now - 42, now) == "42 s ago"
    assert ago(now - 180, now) == "3 min ago"
    assert ago(now - 7200, now) == "2 h ago"
    assert ago(now - 3 * 86400, now) == "3 days ago"
    assert ago(None, now) == "never"


async def test_one_process_has_one_instance_id(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    """The fleet record and the last-use records of an instance carry the same id."""
    client = await make_proxy(fakehub)
    services = client.app[SERVICES]
    assert services.fleet.instance_id == services.janitor.last_use.records.instance
    assert KEY_RE.fullmatch(f"access/0000000000-{services.fleet.instance_id}-1")
