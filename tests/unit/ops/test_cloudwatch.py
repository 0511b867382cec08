"""Embedded-metric-format lines: valid EMF, deltas per report, and a last report at shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support.fakehub import FakeHub
from support.paths import TESTS
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.ops.cloudwatch import EmfReporter
from proxy.ops.metrics import Metrics
from proxy.upstream.client import RateLimit

# The EMF specification's schema (tests/fixtures: written from the specification's text).
EMF_SCHEMA = json.loads((TESTS / "fixtures" / "cloudwatch-emf.schema.json").read_text())
Draft202012Validator.check_schema(EMF_SCHEMA)
EMF = Draft202012Validator(EMF_SCHEMA)


def emf_violations(line: str) -> list[str]:
    """Why CloudWatch would not extract metrics from this log line: the schema, and the rules of
    the specification's text that a schema cannot state."""
    document = json.loads(line)  # one JSON object, nothing before or after it
    if not isinstance(document, dict):
        return ["not a JSON object"]
    found = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in EMF.iter_errors(document)]
    if found:
        return found
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                if not isinstance(document.get(key), str):
                    found.append(f"dimension {key}: the root has no string member of that name")
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            numbers = value if isinstance(value, list) and len(value) <= 100 else [value]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
                found.append(f"metric {metric['Name']}: {value!r} is not a number")
    return found


def assert_valid_emf(document: dict[str, Any], namespace: str) -> None:
    """What CloudWatch requires of a log line before it extracts metrics from it."""
    assert emf_violations(json.dumps(document)) == []
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == namespace
    for metric in directive["Metrics"]:
        assert set(metric) == {"Name", "Unit"}


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
    capsys_lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith('{"_aws"')
    ]
    documents = [json.loads(line) for line in capsys_lines]
    assert documents
    fleet = next(d for d in documents if "Upstream" not in d)
    for line in capsys_lines:
        assert emf_violations(line) == [], line
    assert_valid_emf(fleet, "RegistryProxy/Test")
    assert fleet["CountedPulls"] == 1  # the second GET was served from the cache
    assert fleet["Requests"] == 2 and fleet["CacheHits"] >= 1


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


async def test_a_download_in_progress_is_in_the_apps_signal_and_gauge(
    fakehub: FakeHub, make_proxy: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The running app samples its client cap's count: while one blob download is held halfway
    (the upstream pauses mid-body), each metric line says one request in progress, and
    /metrics one more than once it has ended; then the lines say zero."""
    image = fakehub.add_image("library/golang", "1", [b"x" * 200_000])
    digest = image.layer_digests[0]
    pause = fakehub.inject("pause_mid_blob", path_contains=digest)
    client = await make_proxy(
        fakehub, cloudwatch_namespace="RegistryProxy/Test", cloudwatch_interval=0.05
    )

    async def download() -> bytes:
        response = await client.get(f"/v2/library/golang/blobs/{digest}")
        assert response.status == 200
        return await response.read()

    lines: list[dict[str, Any]] = []

    async def fleet_lines_until(wanted: float, count: int) -> None:
        """Collect the fleet lines written until ``count`` in a row say ``wanted`` (5 s at
        most)."""
        async with asyncio.timeout(5):
            while True:
                for line in capsys.readouterr().err.splitlines():
                    if line.startswith('{"_aws"') and '"Upstream"' not in line:
                        assert emf_violations(line) == [], line
                        lines.append(json.loads(line))
                recent = [d["ConcurrentRequests"] for d in lines[-count:]]
                if len(recent) == count and all(v == wanted for v in recent):
                    return
                await asyncio.sleep(0.02)

    async def gauge() -> float:
        """The gauge as /metrics shows it (whether the scrape counts itself is the cap's
        business: compare two readings)."""
        text = await (await client.get("/metrics")).text()
        [value] = [
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("registry_proxy_requests_in_progress ")
        ]
        return value

    task = asyncio.create_task(download())
    await pause.wait_hit()
    await fleet_lines_until(1.0, 3)
    during = await gauge()
    pause.release()
    assert await asyncio.wait_for(task, 10) == b"x" * 200_000
    await fleet_lines_until(0.0, 3)
    assert during - await gauge() == 1


async def test_a_refused_account_is_counted_and_reported(
    fakehub_factory: object, make_proxy: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    hub: FakeHub = await fakehub_factory(users={"hubuser": "current-token"}, allow_anonymous=False)  # type: ignore[operator]
    hub.add_image("library/golang", "a")
    client = await make_proxy(
        hub,
        username="hubuser",
        password="expired-token",
        cloudwatch_namespace="RegistryProxy/Test",
        cloudwatch_interval=3600,
    )
    response = await client.get("/v2/library/golang/manifests/a", headers=ACCEPT_ALL)
    assert response.status in (401, 403, 502, 503)
    text = await (await client.get("/metrics")).text()
    assert (
        'registry_proxy_upstream_auth_failures_total{stage="token",status="401",'
        'upstream="docker.io"} 1.0' in text
    )
    capsys.readouterr()
    await client.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('{"_aws"')]
    fleet = next(json.loads(line) for line in lines if '"Upstream"' not in line)
    assert fleet["UpstreamAuthFailures"] == 1
