"""Negative caching: an upstream 404 for a tag or a manifest is remembered PROXY_NEGATIVE_TTL
seconds, shared by concurrent requests, and forgotten after it."""

from __future__ import annotations

import asyncio

from support.clock import use_clock
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.http.routes import SERVICES

MISSING = "/v2/library/golang/manifests/missing"


async def test_fifty_concurrent_heads_of_a_missing_tag_make_one_upstream_request(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, negative_ttl=30)
    clock = use_clock(client)
    gate = fakehub.inject("slow_first_byte", method="HEAD", path_contains="/manifests/missing")

    async def head() -> int:
        response = await client.head(MISSING, headers=ACCEPT_ALL)
        return response.status

    heads = [asyncio.create_task(head()) for _ in range(50)]
    await gate.wait_hit()
    gate.release()
    assert await asyncio.wait_for(asyncio.gather(*heads), timeout=30) == [404] * 50
    assert fakehub.count("HEAD", "/manifests/missing", status=404) == 1
    assert fakehub.count("GET", "/manifests/missing") == 0

    # Within the negative TTL: answered from memory, HEAD and GET alike.
    clock.advance(29)
    assert (await client.head(MISSING, headers=ACCEPT_ALL)).status == 404
    response = await client.get(MISSING, headers=ACCEPT_ALL)
    assert response.status == 404
    assert (await response.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert fakehub.count(path_contains="/manifests/missing", status=404) == 1

    # After it: one more upstream request, for all of these again.
    clock.advance(2)
    heads = [asyncio.create_task(head()) for _ in range(50)]
    assert await asyncio.wait_for(asyncio.gather(*heads), timeout=30) == [404] * 50
    assert fakehub.count(path_contains="/manifests/missing", status=404) == 2


async def test_a_tag_pushed_upstream_is_seen_after_the_negative_ttl(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub, negative_ttl=30)
    clock = use_clock(client)
    fakehub.add_image("library/golang", "1.22")
    assert (await client.get(MISSING, headers=ACCEPT_ALL)).status == 404
    image = fakehub.add_image("library/golang", "missing")  # pushed now
    clock.advance(20)
    assert (await client.get(MISSING, headers=ACCEPT_ALL)).status == 404  # remembered
    clock.advance(11)
    response = await client.get(MISSING, headers=ACCEPT_ALL)
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == image.digest


async def test_a_missing_digest_is_remembered_too(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, negative_ttl=30)
    clock = use_clock(client)
    path = f"/v2/library/golang/manifests/sha256:{'e' * 64}"
    for method in ("GET", "HEAD", "GET"):
        assert (await client.request(method, path, headers=ACCEPT_ALL)).status == 404
    assert fakehub.count(path_contains="e" * 64, status=404) == 1
    clock.advance(31)
    assert (await client.get(path, headers=ACCEPT_ALL)).status == 404
    assert fakehub.count(path_contains="e" * 64, status=404) == 2


async def test_negative_ttl_zero_asks_every_time(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, negative_ttl=0)
    for _ in range(3):
        assert (await client.head(MISSING, headers=ACCEPT_ALL)).status == 404
    assert fakehub.count("HEAD", "/manifests/missing", status=404) == 3


async def test_failures_are_not_remembered_as_missing(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, negative_ttl=30)
    clock = use_clock(client)
    fakehub.inject(
        "status", status=503, path_contains="/manifests/1.22", times=3
    )  # every retry fails
    assert (await client.get("/v2/golang/manifests/1.22", headers=ACCEPT_ALL)).status == 503
    clock.advance(10)  # past the back-off, well within the negative TTL
    response = await client.get("/v2/golang/manifests/1.22", headers=ACCEPT_ALL)
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == image.digest


async def test_a_digest_once_missing_is_served_once_it_is_cached(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """The cache is asked before the remembered 404: content is immutable, and once cached (here
    by the tag that names it) a digest is served, HEAD and GET (issue 21, mutation: the
    negative-cache check before the cache lookup)."""
    image = fakehub.add_image("library/golang", "1.22")
    repository = fakehub.repositories["library/golang"]
    stored = repository.manifests.pop(image.digest)
    del repository.tags["1.22"]
    client = await make_proxy(fakehub, negative_ttl=30)
    by_digest = f"/v2/library/golang/manifests/{image.digest}"
    assert (await client.get(by_digest, headers=ACCEPT_ALL)).status == 404  # remembered now
    repository.manifests[image.digest] = stored  # pushed upstream ...
    repository.tags["1.22"] = image.digest
    tagged = await client.get("/v2/library/golang/manifests/1.22", headers=ACCEPT_ALL)
    assert tagged.status == 200  # ... and cached through its tag
    fakehub.reset_counts()
    manifests = client.app[SERVICES].manifests
    for memory in ("in memory", "in storage only"):
        for method in ("HEAD", "GET"):
            if memory == "in storage only":
                manifests._manifests.clear()  # as after a restart, or once memory let go of it
            response = await client.request(method, by_digest, headers=ACCEPT_ALL)
            assert response.status == 200, (memory, method)
            assert response.headers["Docker-Content-Digest"] == image.digest
    assert fakehub.count(server=None) == 0
