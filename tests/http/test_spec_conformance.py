"""Answers the OCI distribution-spec conformance suite checks (its read-only pull tests).

- A manifest reference that is neither a tag nor a digest names nothing: 404 MANIFEST_UNKNOWN
  (the suite's "nonexistent manifest" uses ``.INVALID_MANIFEST_NAME``), for HEAD and GET, without
  asking the upstream. A malformed digest stays 400 DIGEST_INVALID.
- ``tags/list?last=T`` lists only tags after T, with ``n`` applied after that, whatever the
  upstream does with ``last`` (CNCF distribution 2.8 lists T itself again).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, Client, ProxyFactory

TAGS = ["1.20", "1.21", "1.22", "bookworm", "latest"]  # lexical order, as registries list them


async def error_of(response: Any) -> str:
    body = await response.json()
    code: str = body["errors"][0]["code"]
    return code


@pytest.mark.parametrize(
    "reference",
    [".INVALID_MANIFEST_NAME", "-bad", "a" * 129, "1.22%00", "...", "t%C3%A9"],
)
async def test_a_reference_that_is_no_tag_and_no_digest_is_an_unknown_manifest(
    fakehub: FakeHub, make_proxy: ProxyFactory, reference: str
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    path = f"/v2/library/golang/manifests/{reference}"
    get = await client.get(path, headers=ACCEPT_ALL)
    assert get.status == 404
    assert await error_of(get) == "MANIFEST_UNKNOWN"
    head = await client.head(path, headers=ACCEPT_ALL)
    assert head.status == 404
    assert await head.read() == b""
    assert fakehub.count(server=None) == 0  # nothing to ask the upstream about


@pytest.mark.parametrize("reference", ["sha256:zzz", f"sha256:{'A' * 64}", "sha512:abc"])
async def test_a_malformed_digest_stays_a_client_error(
    fakehub: FakeHub, make_proxy: ProxyFactory, reference: str
) -> None:
    client = await make_proxy(fakehub)
    path = f"/v2/library/golang/manifests/{reference}"
    for method in ("GET", "HEAD"):
        response = await client.request(method, path, headers=ACCEPT_ALL)
        assert response.status == 400, method
        if method == "GET":
            assert await error_of(response) == "DIGEST_INVALID"
    assert fakehub.count(server=None) == 0


# --- tags/list ---------------------------------------------------------------------------------


async def tags_page(client: Client, query: str) -> tuple[list[str], str | None]:
    response = await client.get(f"/v2/golang/tags/list?{query}")
    assert response.status == 200, await response.text()
    body = await response.json()
    tags: list[str] = body["tags"]
    return tags, response.headers.get("Link")


@pytest.fixture(params=[False, True], ids=["upstream-excludes-last", "upstream-includes-last"])
async def tagged_proxy(
    request: pytest.FixtureRequest, fakehub: FakeHub, make_proxy: ProxyFactory
) -> Client:
    image = fakehub.add_image("library/golang", TAGS[0])
    for tag in TAGS[1:]:
        fakehub.set_tag("library/golang", tag, image.digest)
    fakehub.tags_list_includes_last = request.param
    return await make_proxy(fakehub)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("last=1.21", TAGS[2:]),
        ("last=1.20&n=2", TAGS[1:3]),
        ("n=2&last=1.22", TAGS[3:5]),
        ("last=latest", []),
        ("last=latest&n=3", []),
        ("last=1.205", TAGS[1:]),  # not a tag of the repository: still "after" it
        ("last=", TAGS),
        ("n=10&last=0", TAGS),
    ],
)
async def test_tags_after_last_exclusive_then_n(
    tagged_proxy: Client, query: str, expected: list[str]
) -> None:
    tags, _ = await tags_page(tagged_proxy, query)
    assert tags == expected


async def test_following_the_link_lists_every_tag_once(tagged_proxy: Client) -> None:
    seen: list[str] = []
    query: str | None = "n=2"
    for _ in range(len(TAGS) + 1):  # bounded: one page more than there can be
        assert query is not None
        tags, link = await tags_page(tagged_proxy, query)
        seen += tags
        if link is None:
            break
        assert link.startswith("</v2/golang/tags/list?") and link.endswith('>; rel="next"')
        query = link[link.index("?") + 1 : link.index(">")]
    assert seen == TAGS


async def test_a_full_last_page_has_no_link(tagged_proxy: Client) -> None:
    tags, link = await tags_page(tagged_proxy, "n=2&last=1.22")
    assert tags == TAGS[3:5]
    assert link is None


async def test_the_next_page_keeps_the_upstream_chosen_by_ns(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", TAGS[0])
    for tag in TAGS[1:]:
        fakehub.set_tag("library/golang", tag, image.digest)
    client = await make_proxy(fakehub)
    response = await client.get("/v2/golang/tags/list?n=2&ns=docker.io")
    link = '</v2/golang/tags/list?n=2&last=1.21&ns=docker.io>; rel="next"'
    assert response.headers["Link"] == link


async def test_a_page_is_cut_from_the_ordered_list_whatever_the_upstream_order(
    fakehub: FakeHub, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)

    def unordered(request: web.Request, record: object) -> web.Response:
        # Unordered, and with last itself, as distribution's filesystem driver may list them.
        return web.json_response({"name": "library/golang", "tags": ["latest", "1.20", "1.22"]})

    monkeypatch.setattr(fakehub.registry, "_tags", unordered)
    assert (await tags_page(client, "last=1.20"))[0] == ["1.22", "latest"]
    assert (await tags_page(client, "n=2"))[0] == ["1.20", "1.22"]


async def test_an_upstream_tag_list_that_is_not_one_is_a_bad_gateway(
    fakehub: FakeHub, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy reads the list to cut the page: garbage from upstream is not passed on."""
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)

    def not_a_list(request: web.Request, record: object) -> web.Response:
        return web.json_response({"name": "library/golang", "tags": "1.22"})

    monkeypatch.setattr(fakehub.registry, "_tags", not_a_list)
    response = await client.get("/v2/golang/tags/list?last=1.0")
    assert response.status == 502
    assert await error_of(response) == "UNAVAILABLE"
