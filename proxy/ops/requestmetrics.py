"""The per-request metrics, counted in plain dictionaries and read out when Prometheus scrapes.

    registry_proxy_requests_total{route, method, status}
    registry_proxy_request_duration_seconds{route}          (histogram)
    registry_proxy_cache_total{route, result}

Every client request updates them. prometheus_client's labelled metrics cost a dozen Python calls
and three lock round trips per request for that; the event loop is the only writer here, so
integers in dictionaries do, and ``collect()`` turns them into the same samples at scrape time
(the scrape runs on the event loop too).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Methods are the client's to choose; others are counted as "other", so that no client can grow
# the label sets without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = ("registry_proxy_requests", "Client requests")
LATENCY = (
    "registry_proxy_request_duration_seconds",
    "Time to answer a client request (whole transfer for blobs)",
)
CACHE = ("registry_proxy_cache", "Cache lookups by result")


class RequestMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        # Per route: one count per bucket (the last one: above every bound), and the sum.
        self._latency: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = {}
        self._cache: dict[tuple[str, str], int] = {}
        registry.register(self)

    def observe(
        self, route: str, method: str, status: int, seconds: float, cache: str | None
    ) -> None:
        """Count one answered request (``cache``: "hit", "miss", "stale", or None)."""
        if method not in KNOWN_METHODS:
            method = "other"
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        buckets = self._latency.get(route)
        if buckets is None:
            buckets = self._latency[route] = [0] * (len(LATENCY_BUCKETS) + 1)
            self._latency_sum[route] = 0.0
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: the bound is inclusive
        self._latency_sum[route] += seconds
        if cache is not None:
            cache_key = (route, cache)
            self._cache[cache_key] = self._cache.get(cache_key, 0) + 1

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(*REQUESTS, labels=["route", "method", "status"])
        yield HistogramMetricFamily(*LATENCY, labels=["route"])
        yield CounterMetricFamily(*CACHE, labels=["route", "result"])

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*REQUESTS, labels=["route", "method", "status"])
        for (route, method, status), count in sorted(self._requests.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests

        latency = HistogramMetricFamily(*LATENCY, labels=["route"])
        bounds = [repr(float(bound)) for bound in LATENCY_BUCKETS] + ["+Inf"]
        for route, counts in sorted(self._latency.items()):
            cumulative, total = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            latency.add_metric([route], cumulative, self._latency_sum[route])
        yield latency

        cache = CounterMetricFamily(*CACHE, labels=["route", "result"])
        for (route, result), count in sorted(self._cache.items()):
            cache.add_metric([route, result], count)
        yield cache
