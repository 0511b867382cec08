"""Embedded-metric-format lines: valid EMF, deltas per report, and a last report at shutdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import ProxyFactory
from support.fakehub import FakeHub
from test_metrics import ACCEPT_ALL

from proxy.ops.cloudwatch import EmfReporter
from proxy.ops.metrics import Metrics
from proxy.upstream.client import RateLimit


def assert_valid_emf(document: dict[str, Any], namespace: str) -> None:
    """What CloudWatch requires of a log line before it extracts metrics from it."""
    metadata = document["_aws"]
    assert isinstance(metadata["Timestamp"], int)
    [directive] = metadata["CloudWatchMetrics"]
    assert directive["Namespace"] == namespace
    for dimension_set in directive.get("Dimensions", []):
        for key in dimension_set:
            assert isinstance(document[key], str)
    for metric in directive["Metrics"]:
        assert set(metric) == {"Name", "Unit"}
        value = document[metric["Name"]]
        assert isinstance(value, int | float) and not isinstance(value, bool)


def busy_metrics() -> Metrics:
    metrics = Metrics()
    for route, status, cache, count in (
        ("blob", 200, "hit", 3),
        ("blob", 200, "miss", 2),
        ("manifest", 503, "hit", 1),
        ("manifest", 503, "stale", 1),
    ):
        for _ in range(count):
            metrics.observe_request(route, "GET", status, 0.01, cache, None, None, None)
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
    assert "Dimensions" not in fleet["_aws"]["CloudWatchMetrics"][0]
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
    metrics.observe_request("blob", "GET", 200, 0.01, "miss", None, None, None)
    metrics.rate_limit("docker.io", None, counted=True)
    busy, hub, _ = reporter.report()
    assert busy["CacheMisses"] == 1 and busy["CountedPulls"] == 1 and hub["CountedPulls"] == 1


async def test_the_app_reports_what_it_served_when_it_stops(
    fakehub: FakeHub, make_proxy: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    fakehub.add_image("library/golang", "1")
    client = await make_proxy(
        fakehub, cloudwatch_namespace="RegistryProxy/Test", cloudwatch_interval=3600
    )
    for _ in range(2):
        response = await client.get("/v2/library/golang/manifests/1", headers=ACCEPT_ALL)
        assert response.status == 200
    capsys.readouterr()
    await client.close()  # a task that scales in reports its last counts on the way out
    documents = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if line.startswith('{"_aws"')
    ]
    fleet = next(d for d in documents if "Upstream" not in d)
    assert_valid_emf(fleet, "RegistryProxy/Test")
    assert fleet["CountedPulls"] == 1  # the second GET was served from the cache
    assert fleet["Requests"] == 2 and fleet["CacheHits"] >= 1
