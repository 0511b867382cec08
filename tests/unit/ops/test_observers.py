"""proxy/ops/observers.py: each event reaches the metrics, the quota tracker and the page."""

from __future__ import annotations

from proxy.ops.activity import Activity
from proxy.ops.metrics import Metrics
from proxy.ops.observers import Observers
from proxy.ops.quota import QuotaTracker
from proxy.upstream.client import RateLimit


def test_every_part_hears_what_it_keeps() -> None:
    observers = Observers(Metrics(), QuotaTracker(), Activity())
    metrics, quotas, activity = observers.metrics, observers.quotas, observers.activity
    sample = metrics.registry.get_sample_value

    observers.rate_limit("docker.io", RateLimit(100, 42, 21600, None), counted=True)
    assert sample("registry_proxy_upstream_pulls_total", {"upstream": "docker.io"}) == 1
    assert sample("registry_proxy_upstream_quota_remaining", {"upstream": "docker.io"}) == 42
    quota = quotas.get("docker.io")
    assert quota is not None and quota.counted_pulls == 1
    page = activity.snapshot()["upstreams"]["docker.io"]
    assert page["counted_pulls"] == 1 and page["ratelimit"]["remaining"] == 42

    observers.upstream_request("docker.io", "GET", 503)
    labels = {"upstream": "docker.io", "method": "GET", "status": "503"}
    assert sample("registry_proxy_upstream_requests_total", labels) == 1
    assert activity.snapshot()["upstreams"]["docker.io"]["errors"] == 1

    observers.upstream_refused("docker.io", "token", 401)
    labels = {"upstream": "docker.io", "stage": "token", "status": "401"}
    assert sample("registry_proxy_upstream_auth_failures_total", labels) == 1

    observers.observe_request("manifest", "GET", 200, 0.01, "stale", "library/x", "1", "why")
    labels = {"route": "manifest", "result": "stale"}
    assert sample("registry_proxy_cache_total", labels) == 1
    assert activity.stale == 1 and activity.repositories["library/x"] == 1

    observers.served_bytes(True, 1000)
    assert sample("registry_proxy_served_bytes_total", {"source": "cache"}) == 1000
    assert activity.bytes_from_cache == 1000
