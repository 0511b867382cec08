"""proxy/ops/activity.py: this instance's figures for the status page stay bounded, however many
repositories and minutes go by.
"""

from __future__ import annotations

from support.clock import Clock

from proxy.ops.activity import HISTORY_MINUTES, MAX_REPOSITORIES, Activity


def test_activity_stays_bounded() -> None:
    clock = Clock(1_800_000_000.0)
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
