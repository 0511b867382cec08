"""Fleet-wide metrics for CloudWatch, as embedded-metric-format (EMF) log lines.

``/metrics`` tells about one instance; behind a load balancer an operator wants the totals of
all of them: counted pulls, the cache hit ratio, bytes served. With
``PROXY_CLOUDWATCH_NAMESPACE`` set, every ``PROXY_CLOUDWATCH_INTERVAL`` seconds (and once more at
shutdown) each instance writes what happened since its previous report as JSON lines on stderr,
which the awslogs driver ships to CloudWatch Logs; CloudWatch turns them into metrics, summed
over the fleet by the statistic ``Sum``. No agent, no API call, no extra permission.

Each report is one line of fleet metrics without dimensions (one empty DimensionSet, ``[[]]``:
the EMF specification requires ``Dimensions`` with at least one set, and CloudWatch drops a
document without), plus one line per upstream (dimension ``Upstream``) with its counted pulls
and, when the upstream reported it, the quota left. Counters are deltas since the previous
report; gauges are the value at report time (use ``Maximum`` or ``Minimum`` across the fleet);
``ConcurrentRequests`` is this instance's average over the interval (``Average`` across the
fleet: the requests one task serves at once, which the stack scales on).

``ConcurrentRequests`` is sampled: once a second the reporter reads how many requests are in
progress (the client cap's count, ``proxy/http/clientcap.py``) and reports the mean of the
interval's samples. A download counts in every second it runs, from its first byte to its last,
so a task busy with long transfers shows as busy while it is, not when they end. (Computed from
the seconds the finished requests took, the figure would be lumpy: a minute of ten-minute
downloads would read 0, and the minute they all end, 100.)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.ops.metrics import Metrics

Writer = Callable[[str], None]
Document = dict[str, Any]

# Counters reported as deltas: EMF name -> (Prometheus sample, label filter).
COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "Requests": ("registry_proxy_requests_total", {}),
    "CacheHits": ("registry_proxy_cache_total", {"result": "hit"}),
    "CacheMisses": ("registry_proxy_cache_total", {"result": "miss"}),
    "CacheStale": ("registry_proxy_cache_total", {"result": "stale"}),
    "BytesFromCache": ("registry_proxy_served_bytes_total", {"source": "cache"}),
    "BytesFromUpstream": ("registry_proxy_served_bytes_total", {"source": "upstream"}),
    "CountedPulls": ("registry_proxy_upstream_pulls_total", {}),
    "StorageErrors": ("registry_proxy_storage_errors_total", {}),
    # the token service refused the upstream account (an expired or revoked token)
    "UpstreamAuthFailures": ("registry_proxy_upstream_auth_failures_total", {"stage": "token"}),
}
UNITS = {"BytesFromCache": "Bytes", "BytesFromUpstream": "Bytes"}
SERVER_ERRORS = "ServerErrors"  # requests answered 5xx
# Client requests served at once: the mean of a once-a-second sample of the requests in progress
# over the report interval. The stack scales on it.
CONCURRENT_REQUESTS = "ConcurrentRequests"
SAMPLE_INTERVAL = 1.0
# A document with no dimension still names one DimensionSet, an empty one: the EMF
# specification requires Dimensions, with at least one set.
NO_DIMENSIONS: list[list[str]] = [[]]


def _write_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@dataclass(slots=True)
class EmfReporter:
    """Turns the instance's Prometheus counters into EMF documents, one report at a time."""

    metrics: Metrics
    namespace: str
    spool_dir: Path | None = None
    write: Writer = _write_stderr
    clock: Callable[[], float] = time.time
    # How many client requests are in progress now (None: not known, reported as 0).
    in_progress: Callable[[], int] | None = None
    _previous: dict[str, float] = field(default_factory=dict)
    _in_progress_sum: float = 0.0
    _in_progress_samples: int = 0

    def sample(self) -> None:
        """Read the requests in progress once (``emf_reporting`` calls it every second)."""
        self._in_progress_sum += self.in_progress() if self.in_progress is not None else 0
        self._in_progress_samples += 1

    def report(self) -> list[Document]:
        """Write (and return) the documents for what happened since the previous report."""
        documents = [self._fleet_document(), *self._upstream_documents()]
        for document in documents:
            self.write(json.dumps(document, separators=(",", ":")))
        return documents

    def _fleet_document(self) -> Document:
        values: dict[str, float] = {
            name: self._delta(name, self._sum(sample, labels))
            for name, (sample, labels) in COUNTERS.items()
        }
        values[SERVER_ERRORS] = self._delta(SERVER_ERRORS, self._server_errors())
        values[CONCURRENT_REQUESTS] = self._concurrency()
        units = {name: UNITS.get(name, "Count") for name in values}
        gauge = self.metrics.registry.get_sample_value("registry_proxy_inflight_fetches")
        values["InFlightFetches"] = gauge or 0.0
        units["InFlightFetches"] = "Count"
        used = self._spool_used_percent()
        if used is not None:
            values["SpoolDiskUsedPercent"] = used
            units["SpoolDiskUsedPercent"] = "Percent"
        return self._document(values, units, dimensions=None)

    def _upstream_documents(self) -> list[Document]:
        """One line per upstream that answered a manifest request (its pulls sample exists)."""
        pulls = self._per_upstream("registry_proxy_upstream_pulls_total")
        remaining = self._per_upstream("registry_proxy_upstream_quota_remaining")
        documents = []
        for upstream, counted in sorted(pulls.items()):
            values = {"CountedPulls": self._delta(f"CountedPulls/{upstream}", counted)}
            units = {"CountedPulls": "Count"}
            if upstream in remaining:
                values["QuotaRemaining"] = remaining[upstream]
                units["QuotaRemaining"] = "Count"
            documents.append(self._document(values, units, dimensions={"Upstream": upstream}))
        return documents

    def _per_upstream(self, sample_name: str) -> dict[str, float]:
        return {
            sample.labels["upstream"]: sample.value
            for family in self.metrics.registry.collect()
            for sample in family.samples
            if sample.name == sample_name and "upstream" in sample.labels
        }

    def _document(
        self, values: dict[str, float], units: dict[str, str], dimensions: dict[str, str] | None
    ) -> Document:
        directive: Document = {
            "Namespace": self.namespace,
            "Metrics": [{"Name": name, "Unit": units[name]} for name in values],
        }
        directive["Dimensions"] = [sorted(dimensions)] if dimensions else NO_DIMENSIONS
        return {
            "_aws": {"Timestamp": int(self.clock() * 1000), "CloudWatchMetrics": [directive]},
            "event": "metrics",
            **(dimensions or {}),
            **values,
        }

    def _concurrency(self) -> float:
        """The mean of the samples since the previous report (one taken now if there are
        none: a report right after start-up, or at shutdown right after another)."""
        if self._in_progress_samples == 0:
            self.sample()
        mean = self._in_progress_sum / self._in_progress_samples
        self._in_progress_sum = 0.0
        self._in_progress_samples = 0
        return round(mean, 3)

    def _delta(self, key: str, total: float) -> float:
        previous = self._previous.get(key, 0.0)
        self._previous[key] = total
        # A counter never goes down; if it did (a new registry), count from zero again.
        return total - previous if total >= previous else total

    def _sum(self, sample_name: str, labels: dict[str, str]) -> float:
        total = 0.0
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == sample_name and all(
                    sample.labels.get(key) == value for key, value in labels.items()
                ):
                    total += sample.value
        return total

    def _server_errors(self) -> float:
        total = 0.0
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "registry_proxy_requests_total" and sample.labels.get(
                    "status", ""
                ).startswith("5"):
                    total += sample.value
        return total

    def _spool_used_percent(self) -> float | None:
        if self.spool_dir is None:
            return None
        try:
            stats = os.statvfs(self.spool_dir)
        except OSError:
            return None
        if stats.f_blocks == 0:
            return None
        return round(100.0 * (1 - stats.f_bavail / stats.f_blocks), 2)


def emf_reporting(
    namespace: str,
    interval: float,
    metrics: Callable[[], Metrics],
    spool_dir: Path | None,
    in_progress: Callable[[], int] | None = None,
) -> Callable[[object], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry (it takes the app, and needs nothing of it): sample the requests
    in progress every second and report every ``interval`` seconds while the app runs, and once
    more when it stops (so a task that scales in does not take its last counts with it)."""

    async def reporting(app: object) -> AsyncIterator[None]:
        reporter = EmfReporter(metrics(), namespace, spool_dir, in_progress=in_progress)
        step = min(SAMPLE_INTERVAL, interval)

        async def loop() -> None:
            clock = asyncio.get_running_loop().time
            next_report = clock() + interval
            while True:
                await asyncio.sleep(step)
                reporter.sample()
                if clock() >= next_report:
                    reporter.report()
                    next_report = clock() + interval

        task = asyncio.create_task(loop(), name="cloudwatch emf")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            reporter.report()

    return reporting
