"""Tags deleted upstream: 404 after the TTL by default; with PROXY_KEEP_DELETED_TAGS=true the last
known digest, with a Warning. Counted in metrics either way."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import TestClient
from support.clock import use_clock
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.http.routes import SERVICES

TAG = "/v2/library/golang/manifests/1.22"


def deleted_answers(client: TestClient[web.Request, web.Application], action: str) -> float:
    text = client.app[SERVICES].metrics.exposition().decode()
    pattern = (
        r"registry_proxy_deleted_tag_answers_total\{"
        rf'action="{action}",upstream="docker.io"\}} (\S+)'
    )
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


async def test_by_default_a_deleted_tag_answers_404_after_the_ttl(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=60, negative_ttl=30)
    clock = use_clock(client)
    assert (await client.get(TAG, headers=ACCEPT_ALL)).status == 200
    fakehub.delete_tag("library/golang", "1.22")

    clock.advance(59)  # within the TTL the proxy does not know yet, and does not ask
    assert (await client.get(TAG, headers=ACCEPT_ALL)).status == 200
    clock.advance(2)
    for method in ("GET", "HEAD", "GET"):
        response = await client.request(method, TAG, headers=ACCEPT_ALL)
        assert response.status == 404
    error = (await response.json())["errors"][0]
    assert error["code"] == "MANIFEST_UNKNOWN"
    assert "deleted upstream" in error["detail"]
    assert fakehub.count("HEAD", "/manifests/1.22", status=404) == 1  # then remembered
    assert deleted_answers(client, "not_found") == 3
    assert deleted_answers(client, "kept") == 0
    # The content itself is immutable and stays pullable by digest.
    by_digest = await client.get(f"/v2/library/golang/manifests/{image.digest}")
    assert by_digest.status == 200


async def test_kept_deleted_tag_serves_the_last_digest_with_a_warning(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    old = fakehub.add_image("library/golang", "1.22", [b"old"])
    client = await make_proxy(fakehub, tag_ttl=60, negative_ttl=30, keep_deleted_tags=True)
    clock = use_clock(client)
    assert (await client.get(TAG, headers=ACCEPT_ALL)).status == 200
    fakehub.delete_tag("library/golang", "1.22")
    clock.advance(61)
    for method in ("GET", "HEAD"):
        response = await client.request(method, TAG, headers=ACCEPT_ALL)
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == old.digest
        assert response.headers["Warning"] == (
            '110 registry-proxy "served from cache: upstream no longer has this tag"'
        )
    assert await (await client.get(TAG, headers=ACCEPT_ALL)).read() == old.manifest
    assert fakehub.count("HEAD", "/manifests/1.22", status=404) == 1
    assert deleted_answers(client, "kept") == 3
    assert deleted_answers(client, "not_found") == 0

    # Pushed again upstream: after the negative TTL the tag moves on, without a warning.
    new = fakehub.add_image("library/golang", "1.22", [b"new"])
    clock.advance(31)
    response = await client.get(TAG, headers=ACCEPT_ALL)
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == new.digest
    assert "Warning" not in response.headers


async def test_a_tag_never_seen_is_not_counted_as_deleted(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, keep_deleted_tags=True)
    response = await client.get("/v2/library/golang/manifests/never", headers=ACCEPT_ALL)
    assert response.status == 404
    assert deleted_answers(client, "kept") == deleted_answers(client, "not_found") == 0
