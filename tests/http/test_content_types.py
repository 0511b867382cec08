"""What a response may be taken for: manifests only as manifests, nothing sniffed, no script run.

An upstream (or whoever can push to it) decides what a manifest's bytes and declared type are.
Served as ``text/html``, they were a page on the proxy's origin, whose script could read
``/status`` with the operator's credentials. Now:

- a manifest is served only with a manifest media type the proxy knows; an upstream answer of
  another type is refused like any unusable answer (502, nothing stored; a tag falls back to
  what it named before), and an entry of another type cached by an older version is dropped;
- every response carries ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy; the
  status page brings its own, which allows exactly its inline style and script.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.browser import Browser
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.cache.keys import manifest_key
from proxy.http.clientcap import CLIENT_CAP
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest

BIG = bytes(range(256)) * 4096 * 48  # 48 MiB: more than the loopback buffers hold

PAGE = b"""<!doctype html><html><head><title>innocent</title></head><body>
<script>
window.ran = true;
document.title = "ran";
fetch("/status").then(r => r.text()).then(t => { window.stolen = t.length; });
</script></body></html>"""

NOT_MANIFESTS = [
    ("text/html", PAGE),
    ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
    ("application/vnd.example.thing.v1+json", b'{"schemaVersion": 2}'),
    ("application/json", b'{"schemaVersion": 2, "mediaType": "text/html"}'),
    ("application/json", PAGE),
]


@pytest.mark.parametrize(
    ("content_type", "body"),
    NOT_MANIFESTS,
    ids=["html", "svg", "vendor-json", "json-claiming-html", "html-as-json"],
)
async def test_an_answer_that_is_not_a_manifest_is_refused_and_not_stored(
    fakehub: FakeHub, make_proxy: ProxyFactory, content_type: str, body: bytes
) -> None:
    digest = fakehub.add_manifest("library/golang", body, content_type, tag="evil")
    client = await make_proxy(fakehub)
    generic = content_type == "application/json"
    for reference in ("evil", digest):
        for method in ("GET", "HEAD", "GET"):
            response = await client.request(
                method, f"/v2/library/golang/manifests/{reference}", headers=ACCEPT_ALL
            )
            if method == "HEAD" and generic and reference == digest:
                # A HEAD of a generic type has no bytes to judge: it answers (with no body)
                # what an untyped manifest would be; the GET is what is refused.
                assert response.headers["Content-Type"] != content_type
                continue
            assert response.status == 502, (reference, method, await response.text())
            assert response.headers["Content-Type"].startswith("application/json")
            if method == "GET":
                assert (await response.json())["errors"][0]["code"] == "UNAVAILABLE"
    storage = client.app[SERVICES].storage
    assert await storage.get(manifest_key(Digest.parse(digest))) is None


async def test_a_tag_whose_new_manifest_is_not_one_serves_the_last_it_named(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, tag_ttl=0)
    assert (await client.get("/v2/library/golang/manifests/1.22", headers=ACCEPT_ALL)).ok
    fakehub.add_manifest("library/golang", PAGE, "text/html", tag="1.22")
    stale = await client.get("/v2/library/golang/manifests/1.22", headers=ACCEPT_ALL)
    assert stale.status == 200
    assert stale.headers["Docker-Content-Digest"] == image.digest
    assert "served from cache" in stale.headers["Warning"]
    assert await stale.read() == image.manifest


async def test_a_cached_entry_of_another_type_is_dropped_not_served(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Older versions stored whatever type the upstream declared."""
    client = await make_proxy(fakehub)
    digest = Digest.of(PAGE)
    storage = client.app[SERVICES].storage
    await storage.put(manifest_key(digest), PAGE, content_type="text/html")
    response = await client.get(f"/v2/library/golang/manifests/{digest}", headers=ACCEPT_ALL)
    assert response.status == 404  # the upstream does not have it either
    assert response.headers["Content-Type"].startswith("application/json")
    assert await storage.get(manifest_key(digest)) is None


async def test_every_response_says_nosniff_and_brings_a_policy(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", [b"x" * 100_000])
    client = await make_proxy(fakehub, max_clients=1)
    blob = f"/v2/library/golang/blobs/{image.layer_digests[0]}"
    requests = [
        ("GET", "/v2/"),
        ("GET", "/v2/library/golang/manifests/1.22"),
        ("HEAD", "/v2/library/golang/manifests/1.22"),
        ("GET", f"/v2/library/golang/manifests/{image.digest}"),
        ("GET", blob),  # streamed from the upstream
        ("GET", blob),  # sent from the cache
        ("HEAD", blob),
        ("GET", f"/v2/library/golang/blobs/{image.config_digest}"),  # a small blob, memory
        ("GET", "/v2/library/golang/manifests/missing"),
        ("GET", "/v2/UPPER/manifests/x"),
        ("PUT", "/v2/library/golang/manifests/1.22"),
        ("GET", "/v2/library/golang/tags/list"),
        ("GET", "/nowhere"),
        ("POST", "/status"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/status"),
    ]
    for method, path in requests:
        response = await client.request(method, path, headers=ACCEPT_ALL)
        await response.read()
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (method, path)
        assert "default-src 'none'" in response.headers["Content-Security-Policy"], path
    big = f"/v2/library/golang/blobs/{fakehub.add_blob(BIG, repo='library/golang')}"
    await (await client.get(big)).read()
    held = await client.get(big)  # a client that reads nothing holds the one place
    assert client.app[CLIENT_CAP].active == 1
    refused = await client.get("/v2/")
    assert refused.status == 503
    assert refused.headers["X-Content-Type-Options"] == "nosniff"
    held.close()
    for page in ("/", "/ui", "/ui?fragment=1"):
        response = await client.get(page)
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]


async def test_a_page_sent_as_a_manifest_runs_no_script_in_a_browser(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The attack as Chromium sees it: a build host's browser opens the proxy's URL of a
    manifest whose upstream answered with a page. Its script must not run (it read /status)."""
    fakehub.add_manifest("library/golang", PAGE, "text/html", tag="evil")
    client = await make_proxy(fakehub)
    async with Browser.launch(tmp_path) as browser:
        await browser.goto(str(client.make_url("/v2/library/golang/manifests/evil")))
        assert await browser.evaluate("window.ran === true") is False
        assert await browser.evaluate("document.title") != "ran"
        assert "UNAVAILABLE" in await browser.evaluate("document.body.innerText")
