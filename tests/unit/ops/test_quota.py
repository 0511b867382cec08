"""proxy/ops/quota.py: each upstream's quota, and the warning when it runs low."""

from __future__ import annotations

import structlog

from proxy.ops.quota import QuotaTracker
from proxy.upstream.client import RateLimit


def warned(tracker: QuotaTracker, remaining_values: list[int | None]) -> list[int]:
    """The ``remaining`` of each upstream.quota_low line, reporting these values in turn."""
    with structlog.testing.capture_logs() as logs:
        for remaining in remaining_values:
            tracker.rate_limit("docker.io", RateLimit(100, remaining, 21600, None), counted=True)
    return [line["remaining"] for line in logs if line["event"] == "upstream.quota_low"]


def test_warns_below_the_threshold_then_at_every_tenth_of_it() -> None:
    tracker = QuotaTracker(warn_remaining=50)
    # step: 50 // 10 = 5 pulls between warnings once below
    assert warned(tracker, [60, 50, 49, 48, 45, 44, 43, 39, None, 20]) == [49, 44, 39, 20]


def test_the_warning_is_armed_again_once_the_quota_recovers() -> None:
    tracker = QuotaTracker(warn_remaining=10)
    assert warned(tracker, [9, 9, 8, 12, 9, 0]) == [9, 8, 9, 0]


def test_counted_pulls_and_the_last_reading_per_upstream() -> None:
    tracker = QuotaTracker()
    reading = RateLimit(100, 42, 21600, "203.0.113.9")
    tracker.rate_limit("docker.io", reading, counted=True)
    tracker.rate_limit("docker.io", None, counted=True)
    tracker.rate_limit("docker.io", None, counted=False)
    tracker.rate_limit("ghcr.io", None, counted=False)
    hub = tracker.get("docker.io")
    assert hub is not None and hub.counted_pulls == 2 and hub.rate_limit == reading
    assert hub.as_json()["ratelimit"] == {
        "limit": 100,
        "remaining": 42,
        "window": 21600,
        "source": "203.0.113.9",
    }
    ghcr = tracker.get("ghcr.io")
    assert ghcr is not None and ghcr.as_json() == {
        "counted_pulls": 0,
        "ratelimit": None,
        "updated_at": None,
    }
    assert tracker.get("quay.io") is None
