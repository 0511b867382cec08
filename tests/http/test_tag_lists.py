"""``tags/list`` through the proxy: kept for PROXY_NEGATIVE_TTL seconds, one upstream request for
every client asking meanwhile (issue 21, item 12)."""

from __future__ import annotations

import asyncio
import json

from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory

from proxy.cache.taglists import TagLists
from proxy.http.routes import SERVICES


def tag_list_gets(hub: FakeHub) -> int:
    return hub.count("GET", "/tags/list", kind="tags", status=200)


async def test_many_requests_make_one_upstream_request(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    for tag in ("a", "b", "c"):
        fakehub.add_image("library/golang", tag)
    client = await make_proxy(fakehub, negative_ttl=30)
    for _ in range(300):
        response = await client.get("/v2/golang/tags/list")
        assert response.status == 200
        assert json.loads(await response.read())["tags"] == ["a", "b", "c"]
    assert tag_list_gets(fakehub) == 1
    # A page is a question of its own (other n and last), kept the same way.
    for _ in range(3):
        page = await client.get("/v2/golang/tags/list?n=2&last=a")
        assert json.loads(await page.read())["tags"] == ["b", "c"]
    assert tag_list_gets(fakehub) == 2


async def test_concurrent_requests_share_one_upstream_request(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, negative_ttl=30)
    held = fakehub.inject("slow_first_byte", path_contains="/tags/list", times=1)
    requests = [asyncio.create_task(client.get("/v2/golang/tags/list")) for _ in range(20)]
    await held.wait_hit()
    held.release()
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200] * 20
    assert fakehub.count("GET", "/tags/list", kind="tags", status=200) == 1


async def test_a_new_tag_shows_after_the_ttl_and_errors_are_not_kept(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, negative_ttl=30)
    tag_lists: TagLists = client.app[SERVICES].tag_lists
    now = 1000.0
    tag_lists.clock = lambda: now
    fakehub.inject("status", status=404, code="NAME_UNKNOWN", path_contains="/tags/list", times=1)
    failed = await client.get("/v2/golang/tags/list")
    assert failed.status == 404
    first = await client.get("/v2/golang/tags/list")  # the failure was not remembered
    assert json.loads(await first.read())["tags"] == ["1.22"]
    fakehub.add_image("library/golang", "1.23")
    now += 29
    kept = await client.get("/v2/golang/tags/list")
    assert json.loads(await kept.read())["tags"] == ["1.22"]
    now += 2
    fresh = await client.get("/v2/golang/tags/list")
    assert json.loads(await fresh.read())["tags"] == ["1.22", "1.23"]


async def test_a_zero_ttl_asks_every_time(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, negative_ttl=0)
    for _ in range(3):
        assert (await client.get("/v2/golang/tags/list")).status == 200
    assert tag_list_gets(fakehub) == 3
