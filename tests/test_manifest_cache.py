"""Manifests and tags: TTL, HEAD-only revalidation, single-flight, serving stale, quota economy."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ProxyFactory
from support.fakehub import FakeHub

from proxy.manifest import MANIFEST_TYPES
from proxy.routes import SERVICES

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_TYPES)}
TAG_PATH = "/v2/library/golang/manifests/1.22"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def use_clock(client: TestClient[web.Request, web.Application]) -> Clock:
    clock = Clock()
    client.app[SERVICES].manifests.clock = clock
    return clock


async def pull(client: TestClient[web.Request, web.Application], path: str = TAG_PATH) -> str:
    response = await client.get(path, headers=ACCEPT_ALL)
    assert response.status == 200, await response.text()
    await response.read()
    return response.headers["Docker-Content-Digest"]


async def test_tag_within_ttl_makes_no_upstream_request(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=300)
    use_clock(client)
    assert await pull(client) == image.digest
    assert fakehub.manifest_gets() - fakehub.count("GET", kind="manifest", status=401) == 1
    fakehub.reset_counts()
    for _ in range(100):
        assert await pull(client) == image.digest
        assert await pull(client, f"/v2/library/golang/manifests/{image.digest}") == image.digest
    assert fakehub.count(server=None) == 0


async def test_after_ttl_only_heads_while_digest_unchanged(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=60)
    clock = use_clock(client)
    await pull(client)
    fakehub.reset_counts()
    for _ in range(5):
        clock.now += 61
        await pull(client)
    assert fakehub.count("HEAD", kind="manifest", status=200) == 5
    assert fakehub.manifest_gets() == 0


async def test_changed_digest_costs_exactly_one_get(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22", [b"old"])
    client = await make_proxy(fakehub, tag_ttl=0)
    await pull(client)
    new = fakehub.add_image("library/golang", "1.22", [b"new"])
    fakehub.reset_counts()
    remaining = fakehub.rate_remaining
    assert await pull(client) == new.digest
    assert fakehub.count("GET", kind="manifest", status=200) == 1
    assert fakehub.rate_remaining == remaining - 1
    fakehub.reset_counts()
    assert await pull(client) == new.digest  # unchanged again: HEAD only
    assert fakehub.count("GET", kind="manifest") == 0


async def test_concurrent_revalidation_is_one_head(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=60)
    clock = use_clock(client)
    await pull(client)
    clock.now += 61
    fakehub.reset_counts()
    gate = fakehub.inject_slow_first_byte(method="HEAD", path_contains="/manifests/", times=1)
    pulls = [asyncio.create_task(pull(client)) for _ in range(20)]
    await gate.wait_hit()
    gate.release()
    await asyncio.wait_for(asyncio.gather(*pulls), timeout=20)
    assert fakehub.count("HEAD", kind="manifest", status=200) == 1
    assert fakehub.manifest_gets() == 0


async def test_concurrent_cold_misses_are_one_get(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    gate = fakehub.inject_slow_first_byte(method="GET", path_contains="/manifests/", times=1)
    pulls = [
        asyncio.create_task(pull(client, f"/v2/library/golang/manifests/{image.digest}"))
        for _ in range(10)
    ]
    await gate.wait_hit()
    gate.release()
    assert set(await asyncio.wait_for(asyncio.gather(*pulls), timeout=20)) == {image.digest}
    assert fakehub.count("GET", kind="manifest", status=200) == 1


@pytest.mark.parametrize("status", [429, 500, 503, 401])
async def test_upstream_failure_serves_stale(
    fakehub: FakeHub, make_proxy: ProxyFactory, status: int
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=0)
    await pull(client)
    fakehub.inject_status(status, retry_after=30)
    response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
    assert response.status == 200
    assert await response.read() == image.manifest
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert "registry-proxy" in response.headers["Warning"]
    assert fakehub.count("GET", kind="manifest", status=200) == 1  # HEAD failed: no GET after it


async def test_upstream_down_serves_stale_and_uncached_fails_fast(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=0)
    await pull(client)
    await fakehub.close()
    response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    missing = await client.get("/v2/library/golang/manifests/other", headers=ACCEPT_ALL)
    assert missing.status == 503
    assert (await missing.json())["errors"][0]["code"] == "UNAVAILABLE"


async def test_rate_limited_without_cache_is_429_with_retry_after(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    fakehub.set_rate_limit(100, remaining=0)
    response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
    assert response.status == 429
    assert response.headers["Retry-After"] == str(fakehub.retry_after)
    assert (await response.json())["errors"][0]["code"] == "TOOMANYREQUESTS"


async def test_hanging_upstream_gives_a_timely_503(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, upstream_read_timeout=0.5)
    fakehub.inject_hang(path_contains="/manifests/")
    response = await asyncio.wait_for(client.get(TAG_PATH, headers=ACCEPT_ALL), timeout=15)
    assert response.status == 503


async def test_manifest_with_wrong_bytes_is_refused_and_not_cached(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    fakehub.inject_wrong_bytes(path_contains="/manifests/", times=1)
    bad = await client.get(f"/v2/library/golang/manifests/{image.digest}", headers=ACCEPT_ALL)
    assert bad.status == 502
    good = await client.get(f"/v2/library/golang/manifests/{image.digest}", headers=ACCEPT_ALL)
    assert await good.read() == image.manifest


async def test_tag_record_survives_restart(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    first = await make_proxy(fakehub, tag_ttl=300)
    await pull(first)
    fakehub.reset_counts()
    # A new process on the same cache knows the tag and its manifest without asking upstream.
    second = await make_proxy(fakehub, tag_ttl=300, storage=first.app[SERVICES].settings.storage)
    assert await pull(second) == image.digest
    assert fakehub.count(server=None) == 0


async def test_timeouts_are_not_retried(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, upstream_read_timeout=0.3)
    hang = fakehub.inject_hang(method="HEAD", path_contains="/manifests/")
    response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
    assert response.status == 503
    assert hang.hits == 1  # one attempt: a second would double the client's wait


async def test_after_a_failure_stale_tags_do_not_ask_again_at_once(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=0)
    await pull(client)
    fakehub.inject_status(429, retry_after=120, method="HEAD", path_contains="/manifests/")
    fakehub.reset_counts()
    for _ in range(5):
        response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == image.digest
        assert "Warning" in response.headers
    # One HEAD met the 429; the next requests honoured its Retry-After and served stale at once.
    assert fakehub.count("HEAD", kind="manifest", status=429) == 1
