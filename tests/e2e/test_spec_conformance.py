"""The distribution-spec answers of tests/test_spec_conformance.py, against real distribution.

distribution 2.8 (the upstream here) lists ``last`` itself again on ``tags/list?last=T`` (and
lists tags in directory order when not paginating); the proxy's pages must still start after T,
and following its Link headers must list every tag once, in lexical order.
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


def test_tags_after_last_through_the_proxy(
    proxy: ProxyProcess, upstream: Distribution, golang_images: dict[str, PushedImage]
) -> None:
    every = sorted(upstream_tags(upstream))  # unpaginated, distribution lists them unordered
    assert len(every) >= 2, every
    # The upstream's own answer includes last (what the proxy has to correct).
    assert upstream_tags(upstream, f"?last={every[0]}")[0] == every[0]
    for index, last in enumerate(every):
        status, _, body = proxy_get(proxy, f"/v2/{REPO}/tags/list?last={last}")
        assert status == 200
        assert json.loads(body)["tags"] == every[index + 1 :], last
    # Pages of one, following Link: every tag once, in order.
    seen: list[str] = []
    path: str | None = f"/v2/{REPO}/tags/list?n=1"
    for _ in range(len(every) + 1):
        assert path is not None
        status, headers, body = proxy_get(proxy, path)
        assert status == 200
        seen += json.loads(body)["tags"]
        link = headers.get("Link")
        if link is None:
            break
        path = link[link.index("<") + 1 : link.index(">")]
    assert seen == every


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
