"""The per-request metrics expose exactly what prometheus_client's own metrics would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.ops.requestmetrics import LATENCY_BUCKETS, RequestMetrics

OBSERVATIONS = [
    ("manifest", "GET", 200, 0.003, "hit"),
    ("manifest", "HEAD", 200, 0.005, "hit"),  # on a bucket's bound: counted in that bucket
    ("manifest", "GET", 200, 0.2, "miss"),
    ("blob", "GET", 206, 12.0, "hit"),
    ("blob", "GET", 200, 400.0, "miss"),  # above every bound
    ("base", "GET", 200, 0.0001, None),
    ("blob", "GET", 503, 0.01, None),
]


def library_exposition() -> list[str]:
    registry = CollectorRegistry()
    requests = Counter(
        "registry_proxy_requests",
        "Client requests",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "registry_proxy_request_duration_seconds",
        "Time to answer a client request (whole transfer for blobs)",
        ["route"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    cache = Counter(
        "registry_proxy_cache", "Cache lookups by result", ["route", "result"], registry=registry
    )
    for route, method, status, seconds, result in OBSERVATIONS:
        requests.labels(route, method, str(status)).inc()
        latency.labels(route).observe(seconds)
        if result is not None:
            cache.labels(route, result).inc()
    return lines_of(registry)


def lines_of(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_samples_match_the_librarys_own_metrics() -> None:
    registry = CollectorRegistry(auto_describe=True)
    metrics = RequestMetrics(registry)
    for observation in OBSERVATIONS:
        metrics.observe(*observation)
    assert lines_of(registry) == library_exposition()


def test_methods_clients_invent_are_counted_as_other() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    for method in ("BREW", "WHEN", "GET"):
        metrics.observe("other", method, 405, 0.001, None)
    text = generate_latest(registry).decode()
    assert 'registry_proxy_requests_total{method="other",route="other",status="405"} 2.0' in text
    assert 'registry_proxy_requests_total{method="GET",route="other",status="405"} 1.0' in text
    assert "BREW" not in text
