"""The embedded-metric-format reporter (proxy/ops/cloudwatch.py): valid EMF (support.emf) with
fleet and per-upstream lines, deltas per report, the concurrent-requests signal. The running app's
lines: tests/http/test_cloudwatch.py."""

from __future__ import annotations

import json
from pathlib import Path

from support.emf import assert_valid_emf, emf_violations

from proxy.ops.cloudwatch import EmfReporter
from proxy.ops.metrics import Metrics
from proxy.upstream.client import RateLimit


def busy_metrics() -> Metrics:
    metrics = Metrics()
    for route, status, cache, count in (
        ("blob", 200, "hit", 3),
        ("blob", 200, "miss", 2),
        ("manifest", 503, "hit", 1),
        ("manifest", 503, "stale", 1),
    ):
        for _ in range(count):
            metrics.observe_request(route, "GET", status, 0.01, cache)
    metrics.bytes_served.labels("cache").inc(1000)
    metrics.bytes_served.labels("upstream").inc(400)
    quota = RateLimit(limit=100, remaining=42, window=21600, source="203.0.113.9")
    metrics.rate_limit("docker.io", quota, counted=True)
    metrics.rate_limit("docker.io", quota, counted=True)
    metrics.rate_limit("ghcr.io", None, counted=True)
    return metrics


def test_a_report_is_valid_emf_with_fleet_and_per_upstream_lines(tmp_path: Path) -> None:
    lines: list[str] = []
    reporter = EmfReporter(
        busy_metrics(), "RegistryProxy/Test", tmp_path, lines.append, lambda: 1_700_000_000.5
    )
    documents = reporter.report()
    assert [json.loads(line) for line in lines] == documents
    for document in documents:
        assert_valid_emf(document, "RegistryProxy/Test")
        assert document["_aws"]["Timestamp"] == 1_700_000_000_500
    fleet, hub, ghcr = documents
    # no dimensions, said the way the specification requires: one empty DimensionSet
    assert fleet["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]
    assert fleet["Requests"] == 7 and fleet["ServerErrors"] == 2
    assert (fleet["CacheHits"], fleet["CacheStale"], fleet["CacheMisses"]) == (4, 1, 2)
    assert (fleet["BytesFromCache"], fleet["BytesFromUpstream"]) == (1000, 400)
    assert fleet["CountedPulls"] == 3
    assert 0 <= fleet["SpoolDiskUsedPercent"] <= 100
    assert hub["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Upstream"]]
    assert (hub["Upstream"], hub["CountedPulls"], hub["QuotaRemaining"]) == ("docker.io", 2, 42)
    assert (ghcr["Upstream"], ghcr["CountedPulls"]) == ("ghcr.io", 1)
    assert "QuotaRemaining" not in ghcr  # never reported: no made-up value


def test_counters_are_reported_as_deltas() -> None:
    metrics = busy_metrics()
    reporter = EmfReporter(metrics, "RegistryProxy", None, lambda _: None)
    reporter.report()
    quiet, hub, _ = reporter.report()
    assert quiet["Requests"] == 0 and quiet["CacheHits"] == 0 and quiet["CountedPulls"] == 0
    assert hub["CountedPulls"] == 0 and hub["QuotaRemaining"] == 42  # a gauge stays
    assert "SpoolDiskUsedPercent" not in quiet  # no spool directory given
    metrics.observe_request("blob", "GET", 200, 0.01, "miss")
    metrics.rate_limit("docker.io", None, counted=True)
    busy, hub, _ = reporter.report()
    assert busy["CacheMisses"] == 1 and busy["CountedPulls"] == 1 and hub["CountedPulls"] == 1


def test_the_schema_refuses_what_cloudwatch_refuses() -> None:
    """The check can fail: the fleet line as it was written before (no Dimensions), an empty
    Dimensions array, a metric whose value is missing or not a number, a missing dimension."""
    good = {
        "_aws": {
            "Timestamp": 1,
            "CloudWatchMetrics": [
                {"Namespace": "N", "Dimensions": [["Upstream"]], "Metrics": [{"Name": "A"}]}
            ],
        },
        "Upstream": "docker.io",
        "A": 1,
    }
    assert emf_violations(json.dumps(good)) == []
    directive = good["_aws"]["CloudWatchMetrics"][0]  # type: ignore[index]
    for broken in (
        {k: v for k, v in directive.items() if k != "Dimensions"},
        {**directive, "Dimensions": []},
        {**directive, "Metrics": [{"Name": "A", "Unit": "Requests"}]},
        {**directive, "Metrics": [{"Name": "B"}]},
        {**directive, "Dimensions": [["Host"]]},
    ):
        document = {**good, "_aws": {"Timestamp": 1, "CloudWatchMetrics": [broken]}}
        assert emf_violations(json.dumps(document)) != [], broken
    assert emf_violations(json.dumps({**good, "A": "1"})) != []
    assert emf_violations(json.dumps({**good, "_aws": {"CloudWatchMetrics": []}})) != []


def test_the_accounts_refusals_are_reported_from_the_token_service_only() -> None:
    """An expired token shows as 401 from the token service; a repository that is not there
    (Docker Hub: 401 with a valid token) is the registry's, and not the account's fault."""
    metrics = Metrics()
    reporter = EmfReporter(metrics, "RegistryProxy", None, lambda _: None)
    metrics.upstream_refused("docker.io", "token", 401)
    metrics.upstream_refused("docker.io", "token", 401)
    metrics.upstream_refused("docker.io", "registry", 401)
    [fleet, *_] = reporter.report()
    assert fleet["UpstreamAuthFailures"] == 2
    assert reporter.report()[0]["UpstreamAuthFailures"] == 0


def test_concurrent_requests_are_the_mean_of_the_samples_of_the_interval() -> None:
    active = [0]
    reporter = EmfReporter(
        Metrics(), "RegistryProxy", None, lambda _: None, in_progress=lambda: active[0]
    )
    for count in (2, 4, 0, 2):
        active[0] = count
        reporter.sample()
    assert reporter.report()[0]["ConcurrentRequests"] == 2.0
    active[0] = 3  # no sample since the last report: one is taken at report time
    assert reporter.report()[0]["ConcurrentRequests"] == 3.0


def test_a_long_download_counts_in_every_interval_it_runs_in() -> None:
    """The scaling signal is steady while a task is busy: one download through three report
    intervals is one request in progress in each of them, and none once it has ended.  (From
    the seconds that finished requests took, the same download read 0, 0, then 3.)"""
    active = [1]
    metrics = Metrics()
    reporter = EmfReporter(
        metrics, "RegistryProxy", None, lambda _: None, in_progress=lambda: active[0]
    )
    readings = []
    for interval in range(4):
        if interval == 3:  # the download ended at the start of the fourth interval
            metrics.observe_request("blob", "GET", 200, 180.0, "hit")
            active[0] = 0
        for _ in range(60):
            reporter.sample()
        [fleet, *_] = reporter.report()
        assert_valid_emf(fleet, "RegistryProxy")
        readings.append(fleet["ConcurrentRequests"])
    assert readings == [1.0, 1.0, 1.0, 0.0]
