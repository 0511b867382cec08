"""The running app's CloudWatch lines: what it served, reported when it stops; a download in
progress in the concurrent-requests signal and gauge; a refused upstream account counted and
reported. Each line is valid EMF (support.emf). The reporter on its own:
tests/unit/ops/test_cloudwatch.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support.emf import assert_valid_emf, emf_violations
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory


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
