"""Prometheus metrics: the instruments of ``/metrics``, and the observers that only count.

Each app has its own ``CollectorRegistry`` (tests run many apps in one process). What the upstream
client and the request path report reaches ``Metrics`` through ``proxy.ops.observers``, next to
the quota tracker (``proxy.ops.quota``) and the status page's figures (``proxy.ops.activity``);
the blob cache, the prefetcher and the piece fetcher report here directly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.ops.requestmetrics import RequestMetrics
from proxy.upstream.client import RateLimit


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # registry_proxy_requests, _request_duration_seconds and _cache: updated per request.
        self.client_requests = RequestMetrics(r)
        self.bytes_served = Counter(
            "registry_proxy_served_bytes",
            "Blob bytes sent to clients, by where they came from",
            ["source"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "registry_proxy_upstream_requests",
            "Requests to upstream registries",
            ["upstream", "method", "status"],
            registry=r,
        )
        self.upstream_refusals = Counter(
            "registry_proxy_upstream_auth_failures",
            "Upstream 401/403 answers to the proxy's account: stage token (the token service "
            "refused the credentials) or registry (a request refused with the proxy's token)",
            ["upstream", "stage", "status"],
            registry=r,
        )
        self.upstream_pulls = Counter(
            "registry_proxy_upstream_pulls",
            "Counted pulls (manifest GETs) made upstream",
            ["upstream"],
            registry=r,
        )
        self.quota_remaining = Gauge(
            "registry_proxy_upstream_quota_remaining",
            "Pulls left in the upstream's rate-limit window, as last reported",
            ["upstream"],
            registry=r,
        )
        self.quota_limit = Gauge(
            "registry_proxy_upstream_quota_limit",
            "The upstream's pull limit per window, as last reported",
            ["upstream"],
            registry=r,
        )
        self.in_flight = Gauge(
            "registry_proxy_inflight_fetches", "Upstream fetches in progress", registry=r
        )
        self.memory_cache_bytes = Gauge(
            "registry_proxy_memory_cache_bytes",
            "Bytes the bounded in-memory caches hold (manifests; small_blobs, such as image "
            "configs). They fill as new content is pulled and then stay at their bound: the part "
            "of the process's memory that grows with use, by design",
            ["cache"],
            registry=r,
        )
        self.storage_errors = Counter(
            "registry_proxy_storage_errors", "Cache storage failures", registry=r
        )
        # --- prefetch and pieces (proxy.cache.prefetch, proxy.cache.pieces) ---
        self.prefetched_blobs = Counter(
            "registry_proxy_prefetched_blobs",
            "Blobs downloaded (and verified) by prefetch before a client asked for them",
            registry=r,
        )
        self.prefetched_bytes = Counter(
            "registry_proxy_prefetched_bytes", "Bytes of the blobs prefetched", registry=r
        )
        self.prefetch_hits = Counter(
            "registry_proxy_prefetch_hits",
            "Blobs a client asked for that a prefetch had already downloaded or started",
            registry=r,
        )
        self.prefetch_failures = Counter(
            "registry_proxy_prefetch_failures", "Prefetches that failed (only logged)", registry=r
        )
        self.prefetch_skipped = Counter(
            "registry_proxy_prefetch_skipped",
            "Blobs not prefetched: no room below the cache's limit, or over prefetching's share",
            registry=r,
        )
        self.blobs_too_large = Counter(
            "registry_proxy_blobs_too_large",
            "Blobs larger than a quarter of the cache's limit: streamed to clients, not cached",
            registry=r,
        )
        self.fetch_pieces = Counter(
            "registry_proxy_fetch_pieces",
            "Range pieces of big blobs downloaded from upstreams",
            registry=r,
        )
        self.fetch_fallbacks = Counter(
            "registry_proxy_fetch_fallbacks",
            "Big blob downloads that fell back to one stream (Range ignored, a piece failed)",
            registry=r,
        )
        self.deleted_tags = Counter(
            "registry_proxy_deleted_tag_answers",
            "Answers for tags deleted upstream: not_found (404) or kept (PROXY_KEEP_DELETED_TAGS)",
            ["upstream", "action"],
            registry=r,
        )
        self.housekeeping = CacheHousekeepingMetrics(r)

    def deleted_tag(self, upstream: str, action: str) -> None:
        self.deleted_tags.labels(upstream, action).inc()

    # --- client requests (the access-log middleware and the blob handler) -----------------------

    def observe_request(
        self, route: str, method: str, status: int, duration: float, cache: str
    ) -> None:
        self.client_requests.observe(
            route, method, status, duration, None if cache == "-" else cache
        )

    def served_bytes(self, from_cache: bool, count: int) -> None:
        self.bytes_served.labels("cache" if from_cache else "upstream").inc(count)

    # --- the upstream client's observer ---------------------------------------------------------

    def upstream_request(self, upstream: str, method: str, status: int | str) -> None:
        self.upstream_requests.labels(upstream, method, str(status)).inc()

    def upstream_refused(self, upstream: str, stage: str, status: int) -> None:
        self.upstream_refusals.labels(upstream, stage, str(status)).inc()

    def rate_limit(self, upstream: str, rate_limit: RateLimit | None, counted: bool) -> None:
        # Every upstream that answered a manifest request has its pulls counted, 0 included:
        # CloudWatch's per-upstream lines are made from these samples (proxy.ops.cloudwatch).
        pulls = self.upstream_pulls.labels(upstream)
        if counted:
            pulls.inc()
        if rate_limit is None:
            return
        if rate_limit.limit is not None:
            self.quota_limit.labels(upstream).set(rate_limit.limit)
        if rate_limit.remaining is not None:
            self.quota_remaining.labels(upstream).set(rate_limit.remaining)

    # --- the blob cache's and the prefetcher's observer ----------------------------------------

    def blob_prefetched(self, size: int) -> None:
        self.prefetched_blobs.inc()
        self.prefetched_bytes.inc(size)

    def prefetch_failed(self) -> None:
        self.prefetch_failures.inc()

    def prefetch_skipped_blob(self) -> None:
        self.prefetch_skipped.inc()

    def blob_too_large(self) -> None:
        self.blobs_too_large.inc()

    def prefetch_hit(self) -> None:
        self.prefetch_hits.inc()

    def piece_fetched(self) -> None:
        self.fetch_pieces.inc()

    def pieces_fell_back(self) -> None:
        self.fetch_fallbacks.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CacheHousekeepingMetrics:
    """The cache's size and what housekeeping removed (``proxy.cache.upkeep.janitor`` sets them)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.bytes = Gauge(
            "registry_proxy_cache_bytes", "Bytes in the cache, by kind", ["kind"], registry=r
        )
        self.entries = Gauge(
            "registry_proxy_cache_entries", "Entries in the cache, by kind", ["kind"], registry=r
        )
        self.limit = Gauge(
            "registry_proxy_cache_limit_bytes",
            "The cache's size limit as last computed (0: no limit)",
            registry=r,
        )
        self.evictions = Counter(
            "registry_proxy_cache_evictions",
            "Entries evicted to keep the cache under its size limit",
            ["kind"],
            registry=r,
        )
        self.evicted_bytes = Counter(
            "registry_proxy_cache_evicted_bytes", "Bytes evicted", ["kind"], registry=r
        )
        self.expiries = Counter(
            "registry_proxy_cache_expiries",
            "Entries deleted after PROXY_CACHE_EXPIRE_UNUSED without use",
            ["kind"],
            registry=r,
        )
        self.expired_bytes = Counter(
            "registry_proxy_cache_expired_bytes", "Bytes expired", ["kind"], registry=r
        )
        self.sweep_duration = Histogram(
            "registry_proxy_cache_sweep_duration_seconds",
            "Time of one housekeeping pass (inventory and deletes)",
            ["operation"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.corrupt = Counter(
            "registry_proxy_cache_corrupt",
            "Cached blobs found not to be what was committed (size on every read, bytes by the "
            "scrub), removed and fetched again on the next pull",
            ["found_by"],
            registry=r,
        )
        self.scrubbed_bytes = Counter(
            "registry_proxy_cache_scrubbed_bytes", "Bytes the scrub re-hashed", registry=r
        )
        self.disk_full = Counter(
            "registry_proxy_disk_full_events",
            "Writes that found the disk full (cache storage or spool)",
            ["where"],
            registry=r,
        )
