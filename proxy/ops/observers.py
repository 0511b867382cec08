"""What the proxy hears about its own traffic, passed on to each part that keeps count of it.

    event              Metrics (Prometheus)        QuotaTracker              Activity (page)
    upstream_request   requests by status          -                         failures
    rate_limit         pulls, quota gauges         quota, low-quota warning  pulls, last reading
    upstream_refused   refusals by stage           -                         -
    observe_request    requests, latency, cache    -                         hits, top pulls, stale
    served_bytes       bytes by source             -                         bytes by source

The upstream client, the access-log middleware and the blob route tell ``Observers``; the three
parts know nothing of each other. (The blob cache, the prefetcher and the piece fetcher report
to ``Metrics`` alone.)
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.ops.activity import Activity
from proxy.ops.metrics import Metrics
from proxy.ops.quota import QuotaTracker
from proxy.upstream.client import RateLimit


@dataclass(frozen=True, slots=True)
class Observers:
    metrics: Metrics
    quotas: QuotaTracker
    activity: Activity

    # --- the upstream client's observer (proxy.upstream.client.UpstreamObserver) ---------------

    def upstream_request(self, upstream: str, method: str, status: int | str) -> None:
        self.metrics.upstream_request(upstream, method, status)
        self.activity.upstream_request(upstream, method, status)

    def rate_limit(self, upstream: str, rate_limit: RateLimit | None, counted: bool) -> None:
        self.metrics.rate_limit(upstream, rate_limit, counted)
        self.quotas.rate_limit(upstream, rate_limit, counted)
        self.activity.rate_limit(upstream, rate_limit, counted)

    def upstream_refused(self, upstream: str, stage: str, status: int) -> None:
        self.metrics.upstream_refused(upstream, stage, status)

    # --- client requests (the access-log middleware and the blob route) ------------------------

    def observe_request(
        self,
        route: str,
        method: str,
        status: int,
        duration: float,
        cache: str,
        repository: str | None,
        reference: str | None,
        warning: str | None,
    ) -> None:
        self.metrics.observe_request(route, method, status, duration, cache)
        self.activity.observe_request(route, cache, repository, reference, warning)

    def served_bytes(self, from_cache: bool, count: int) -> None:
        self.metrics.served_bytes(from_cache, count)
        self.activity.served_bytes(from_cache, count)
