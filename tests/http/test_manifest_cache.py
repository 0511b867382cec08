"""Manifests and tags: TTL, HEAD-only revalidation, single-flight, serving stale, quota economy."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from support.clock import use_clock
from support.fakehub import FakeHub, ImageInfo
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.http.routes import SERVICES
from proxy.upstream.backoff import RATE_LIMIT_MAX_SECONDS

TAG_PATH = "/v2/library/golang/manifests/1.22"


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
    gate = fakehub.inject("slow_first_byte", method="HEAD", path_contains="/manifests/", times=1)
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
    gate = fakehub.inject("slow_first_byte", method="GET", path_contains="/manifests/", times=1)
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
    fakehub.inject("status", status=status, retry_after=30)
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
    client = await make_proxy(fakehub, read_timeout=0.5)
    fakehub.inject("hang", path_contains="/manifests/")
    response = await asyncio.wait_for(client.get(TAG_PATH, headers=ACCEPT_ALL), timeout=15)
    assert response.status == 503


async def test_manifest_with_wrong_bytes_is_refused_and_not_cached(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    fakehub.inject("wrong_bytes", path_contains="/manifests/", times=1)
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
    second = await make_proxy(
        fakehub, tag_ttl=300, location=first.app[SERVICES].settings.storage.location
    )
    assert await pull(second) == image.digest
    assert fakehub.count(server=None) == 0


async def test_timeouts_are_not_retried(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, read_timeout=0.3)
    hang = fakehub.inject("hang", method="HEAD", path_contains="/manifests/")
    response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
    assert response.status == 503
    assert hang.hits == 1  # one attempt: a second would double the client's wait


async def test_after_a_failure_stale_tags_do_not_ask_again_at_once(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=0)
    await pull(client)
    fakehub.inject(
        "status", status=429, retry_after=120, method="HEAD", path_contains="/manifests/"
    )
    fakehub.reset_counts()
    for _ in range(5):
        response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == image.digest
        assert "Warning" in response.headers
    # One HEAD met the 429; the next requests honoured its Retry-After and served stale at once.
    assert fakehub.count("HEAD", kind="manifest", status=429) == 1


# --- a moved tag while the upstream refuses the new manifest (issue 9) -------------------------

GET_FAILURES = ("quota", "503", "timeout", "dropped")
WARNINGS = {
    "quota": "upstream rate limit reached",
    "503": "upstream answered 503",
    "timeout": "upstream timed out",
    "dropped": "upstream connection dropped",
}


async def pull_image(
    client: TestClient[web.Request, web.Application], path: str, image: ImageInfo
) -> ClientResponse:
    """Pull by ``path`` (a tag) like a client: the manifest, then every blob, all verified."""
    response = await client.get(path, headers=ACCEPT_ALL)
    assert response.status == 200, await response.text()
    assert await response.read() == image.manifest
    for digest, data in zip(image.blob_digests, (image.config, *image.layers), strict=True):
        blob = await client.get(f"/v2/{image.repo}/blobs/{digest}")
        assert blob.status == 200, await blob.text()
        assert await blob.read() == data
    return response


@pytest.mark.parametrize("failure", GET_FAILURES)
async def test_moved_tag_whose_new_manifest_fails_serves_the_old_digest(
    fakehub: FakeHub, make_proxy: ProxyFactory, failure: str
) -> None:
    old = fakehub.add_image("library/alpine", "x", [b"old layer"])
    client = await make_proxy(fakehub, tag_ttl=60, read_timeout=0.5)
    clock = use_clock(client)
    path = "/v2/library/alpine/manifests/x"
    await pull_image(client, path, old)

    new = fakehub.add_image("library/alpine", "x", [b"new layer"])  # the tag moved upstream
    if failure == "quota":
        fakehub.set_rate_limit(100, remaining=0)
    elif failure == "503":
        fakehub.inject("status", status=503, method="GET", path_contains="/manifests/")
    elif failure == "timeout":
        fakehub.inject("hang", method="GET", path_contains="/manifests/")
    else:
        fakehub.inject("drop_mid_blob", path_contains="/manifests/", server="registry")
    clock.now += 61
    fakehub.reset_counts()

    stale = await pull_image(client, path, old)  # the HEAD saw the new digest, the GET failed
    assert stale.headers["Docker-Content-Digest"] == old.digest
    assert stale.headers["Warning"] == (
        f'110 registry-proxy "served from cache: {WARNINGS[failure]}"'
    )
    assert fakehub.count("HEAD", kind="manifest", status=200) == 1
    # No counted pull spent beyond the one GET that failed (a dropped body had its 200 sent).
    assert fakehub.count("GET", kind="manifest", status=200) == (failure == "dropped")

    # In back-off: served stale again without asking the upstream at all.
    fakehub.reset_counts()
    again = await client.get(path, headers=ACCEPT_ALL)
    assert again.headers["Docker-Content-Digest"] == old.digest
    assert "Warning" in again.headers
    assert fakehub.count(server=None) == 0

    # The upstream recovers: after the back-off (and the TTL, long passed) the tag moves on.
    fakehub.clear_faults()
    fakehub.set_rate_limit(None)
    clock.now += RATE_LIMIT_MAX_SECONDS + 1
    fresh = await pull_image(client, path, new)
    assert fresh.headers["Docker-Content-Digest"] == new.digest
    assert "Warning" not in fresh.headers
    assert fakehub.count("GET", kind="manifest", status=200) == 1


async def test_moved_tag_with_nothing_cached_passes_the_refusal_on(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/alpine", "x", [b"old layer"])
    client = await make_proxy(fakehub, tag_ttl=60)
    clock = use_clock(client)
    await pull(client, "/v2/library/alpine/manifests/x")
    fakehub.add_image("library/alpine", "x", [b"new layer"])
    services = client.app[SERVICES]
    # The old manifest is gone from the cache: nothing to serve stale.
    [record] = [r for r in services.manifests._tags.values()]
    services.manifests._manifests.clear()
    root = services.settings.storage.location.path
    assert root is not None
    for stored in (root / "data" / "manifests").rglob(record.digest.hex):
        stored.unlink()
    fakehub.set_rate_limit(100, remaining=0)
    clock.now += 61
    response = await client.get("/v2/library/alpine/manifests/x", headers=ACCEPT_ALL)
    assert response.status == 429
    assert response.headers["Retry-After"] == str(fakehub.retry_after)


async def test_one_repository_failing_does_not_stall_the_others(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22", [b"old"])
    fakehub.add_image("library/broken", "1", [b"broken"])
    client = await make_proxy(fakehub, tag_ttl=60)
    clock = use_clock(client)
    await pull(client)
    new = fakehub.add_image("library/golang", "1.22", [b"new"])
    fakehub.inject("status", status=500, path_contains="library/broken")
    broken = await client.get("/v2/library/broken/manifests/1", headers=ACCEPT_ALL)
    assert broken.status == 503
    clock.now += 61
    # A 5xx about one repository backs off that repository only: golang's tag still moves on.
    assert await pull(client) == new.digest


async def test_upstream_wide_failures_back_off_every_repository(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=0)  # every request would revalidate
    use_clock(client)
    await pull(client)
    fault = fakehub.inject("status", status=500, path_contains="library/missing")
    for name in ("missing-a", "missing-b"):  # 5xx for two repositories: the upstream is unwell
        response = await client.get(f"/v2/library/{name}/manifests/1", headers=ACCEPT_ALL)
        assert response.status == 503
    fakehub.remove_fault(fault)
    fakehub.reset_counts()
    response = await client.get(TAG_PATH, headers=ACCEPT_ALL)
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Warning"] == (
        '110 registry-proxy "served from cache: upstream failing (5xx); '
        'not asked again for a few seconds"'
    )
    assert fakehub.count(server=None) == 0


async def test_a_name_too_long_upstream_is_refused_before_any_request(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub)
    name = "a" * 255  # valid here; 263 characters once library/ is added
    for method in ("GET", "HEAD"):
        response = await client.request(method, f"/v2/{name}/manifests/x")
        assert response.status == 400
    response = await client.get(f"/v2/{name}/manifests/x")
    assert (await response.json())["errors"][0]["code"] == "NAME_INVALID"
    assert fakehub.count(server=None) == 0
