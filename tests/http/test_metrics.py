"""Quota visibility and metrics: counted pulls, remaining quota, low-quota warning, /metrics."""

from __future__ import annotations

import structlog
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory, downloads_settled

from proxy.cache.blobs import SMALL_BLOB
from proxy.cache.manifests import MEMORY_ENTRY_OVERHEAD


async def test_status_reports_counted_pulls_and_quota(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "a")
    fakehub.add_image("library/golang", "b", [b"other"])
    fakehub.set_rate_limit(100, remaining=50)
    client = await make_proxy(fakehub, username=None)
    for tag in ("a", "b", "a"):
        response = await client.get(f"/v2/library/golang/manifests/{tag}", headers=ACCEPT_ALL)
        assert response.status == 200
    status = await (await client.get("/status")).json()
    upstream = status["upstreams"]["docker.io"]
    assert upstream["counted_pulls"] == 2  # the third pull was a cache hit
    assert upstream["ratelimit"]["limit"] == 100
    assert upstream["ratelimit"]["remaining"] == fakehub.rate_remaining == 48
    assert upstream["ratelimit"]["window"] == 21600


async def test_low_quota_is_logged(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    fakehub.add_image("library/golang", "a")
    fakehub.set_rate_limit(100, remaining=5)
    client = await make_proxy(fakehub, quota_warn_remaining=10)
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/v2/library/golang/manifests/a", headers=ACCEPT_ALL)
        assert response.status == 200
    warnings = [e for e in logs if e["event"] == "upstream.quota_low"]
    assert [w["remaining"] for w in warnings] == [5, 4]  # HEAD reports 5, the GET spends one


async def test_prometheus_metrics(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    image = fakehub.add_image("library/golang", "a")
    # Without prefetch, so the miss and the hit below are the client's own (and no fetch of the
    # image's config is still in flight when the gauge is read).
    client = await make_proxy(fakehub, prefetch=False)
    await (await client.get("/v2/library/golang/manifests/a", headers=ACCEPT_ALL)).read()
    for _ in range(2):  # the miss, stored, then the hit
        await (await client.get(f"/v2/library/golang/blobs/{image.layer_digests[0]}")).read()
        await downloads_settled(client)
    text = await (await client.get("/metrics")).text()
    layer_size = len(image.layers[0])
    assert 'registry_proxy_upstream_pulls_total{upstream="docker.io"} 1.0' in text
    assert f'registry_proxy_served_bytes_total{{source="cache"}} {float(layer_size)}' in text
    assert f'registry_proxy_served_bytes_total{{source="upstream"}} {float(layer_size)}' in text
    assert 'registry_proxy_cache_total{result="hit",route="blob"} 1.0' in text
    assert 'registry_proxy_cache_total{result="miss",route="blob"} 1.0' in text
    assert 'registry_proxy_requests_total{method="GET",route="manifest",status="200"} 1.0' in text
    assert 'registry_proxy_upstream_quota_remaining{upstream="docker.io"}' in text
    assert "registry_proxy_inflight_fetches 0.0" in text
    # The bounded in-memory caches: the manifest as it counts there, the small layer itself.
    manifest_held = len(image.manifest) + MEMORY_ENTRY_OVERHEAD
    assert f'registry_proxy_memory_cache_bytes{{cache="manifests"}} {float(manifest_held)}' in text
    assert layer_size <= SMALL_BLOB
    assert f'registry_proxy_memory_cache_bytes{{cache="small_blobs"}} {float(layer_size)}' in text
    assert (
        'registry_proxy_upstream_requests_total{method="HEAD",status="200",upstream="docker.io"}'
        in text
    )


async def test_credentials_never_logged(fakehub_factory: object, make_proxy: ProxyFactory) -> None:
    hub: FakeHub = await fakehub_factory(users={"hubuser": "s3cr3t-token"}, allow_anonymous=False)  # type: ignore[operator]
    hub.add_image("library/golang", "a")
    client = await make_proxy(hub, username="hubuser", password="s3cr3t-token")
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/v2/library/golang/manifests/a", headers=ACCEPT_ALL)
        assert response.status == 200
    text = repr(logs)
    assert "s3cr3t-token" not in text
    for token in hub.registry.tokens:
        assert token not in text
