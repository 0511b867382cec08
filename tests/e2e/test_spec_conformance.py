"""The distribution-spec answers of tests/http/test_spec_conformance.py, against real distribution.

distribution 2.8 (the upstream here) lists ``last`` itself again on ``tags/list?last=T``, and in
the order its filesystem driver reads the directory; the proxy's pages must still hold exactly
the tags after T, in lexical order, with ``n`` applied after that. (Following Links page by page
is pinned in process against the fake hub: distribution's own ``n`` cuts its unordered list, so
small pages from it can skip tags whatever a proxy does.)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from support.distribution import Distribution
from support.oci_image import PushedImage
from support.proxy_process import ProxyProcess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

REPO = "library/golang"


def upstream_tags(upstream: Distribution, query: str = "") -> list[str]:
    status, _, body = upstream.request(
        "GET",
        f"/v2/{REPO}/tags/list{query}",
        headers={"Authorization": f"Bearer {upstream.token(REPO)}"},
    )
    assert status == 200, body
    tags: list[str] = json.loads(body)["tags"]
    return tags


def proxy_get(proxy: ProxyProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(proxy.url + path, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def proxy_tags(proxy: ProxyProcess, query: str) -> tuple[list[str], str | None]:
    status, headers, body = proxy_get(proxy, f"/v2/{REPO}/tags/list?{query}")
    assert status == 200, body
    tags: list[str] = json.loads(body)["tags"]
    return tags, headers.get("Link")


def test_tags_after_last_through_the_proxy(
    proxy: ProxyProcess, upstream: Distribution, golang_images: dict[str, PushedImage]
) -> None:
    every = sorted(upstream_tags(upstream))
    assert len(every) >= 2, every
    # What the proxy corrects: the upstream lists last itself again.
    assert every[0] in upstream_tags(upstream, f"?last={every[0]}")
    for index, last in enumerate(every):
        assert proxy_tags(proxy, f"last={last}") == (every[index + 1 :], None), last
    # n applied after last; a page that holds the rest has no Link.
    whole = len(every)
    assert proxy_tags(proxy, f"n={whole}") == (every, None)
    assert proxy_tags(proxy, f"n={whole}&last={every[0]}") == (every[1:], None)
    tags, link = proxy_tags(proxy, f"n={whole - 1}&last={every[0]}")
    assert tags == every[1:]
    assert link is None
    tags, link = proxy_tags(proxy, f"n=1&last={every[-2]}")
    assert (tags, link) == ([every[-1]], None)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_invalid_manifest_name_is_unknown(
    proxy: ProxyProcess, upstream: Distribution, method: str
) -> None:
    mark = upstream.mark()
    request = urllib.request.Request(
        f"{proxy.url}/v2/{REPO}/manifests/.INVALID_MANIFEST_NAME", method=method
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    with caught.value as error:
        assert error.code == 404
        if method == "GET":
            assert json.loads(error.read())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    upstream.sync()
    assert upstream.count(since=mark) == 0
