"""The status page (proxy/ops/status_page.py) in a real headless Chromium, and the fleet's figures.

The page is loaded from a proxy that served cold and warm pulls through the fake Docker Hub: the
figures it shows equal ``/status``, a slow download's progress bar moves as the page refreshes
itself, a refresh shifts nothing, a narrow window does not overflow, and the Content-Security-
Policy lets the inline style and script run (no console error). A screenshot is written
(``UPDATE_SCREENSHOTS=1`` also writes docs/status-page.png, the README's picture).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ProxyFactory
from support.browser import Browser
from support.fakehub import FakeHub

from proxy.config import StorageLocation
from proxy.config_values import human_bytes
from proxy.http.routes import SERVICES
from proxy.ops.status_page import human_count, percent
from proxy.registry.manifest import MANIFEST_TYPES

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_TYPES)}
SCREENSHOT = Path(__file__).parent.parent / "docs" / "status-page.png"
SCREEN = (1280, 1000)

Client = TestClient[web.Request, web.Application]

# Every figure on the page as {label: text}.
FIGURES_JS = """
Object.fromEntries([...document.querySelectorAll('dl > div')].map(
  d => [d.querySelector('dt').textContent.trim(), d.querySelector('dd').textContent.trim()]))
"""
PROGRESS_JS = """
[...document.querySelectorAll('progress[aria-label]')]
  .filter(p => !p.getAttribute('aria-label').startsWith('Cache size'))
  .map(p => p.value)
"""
SECTION_BOXES_JS = """
[...document.querySelectorAll('section')].map(s => {
  const r = s.getBoundingClientRect(); return [Math.round(r.x), Math.round(r.y),
  Math.round(r.width), Math.round(r.height)]; })
"""


async def pull(client: Client, repository: str, tag: str, blobs: tuple[str, ...]) -> None:
    response = await client.get(f"/v2/{repository}/manifests/{tag}", headers=ACCEPT_ALL)
    assert response.status == 200, await response.text()
    await response.read()
    for digest in blobs:
        blob = await client.get(f"/v2/{repository}/blobs/{digest}")
        assert blob.status == 200
        await blob.read()


async def test_the_page_shows_what_status_says_and_refreshes_itself(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    fakehub.set_rate_limit(100)
    alpine = fakehub.add_image("library/alpine", "3.20", [b"a" * 300_000])
    golang = fakehub.add_image("library/golang", "1.22", [b"g" * 200_000])
    slow_layer = os.urandom(3_000_000)
    slow = fakehub.add_image("library/slow", "1", [slow_layer])
    client = await make_proxy(fakehub, tag_ttl=0, read_timeout=60)
    for _ in range(3):  # one cold pull, then warm ones
        await pull(client, "library/alpine", "3.20", alpine.blob_digests)
    await pull(client, "library/golang", "1.22", golang.blob_digests)
    fakehub.inject_status(429, method="HEAD", path_contains="library/golang", times=1)
    stale = await client.get("/v2/library/golang/manifests/1.22", headers=ACCEPT_ALL)
    assert "Warning" in stale.headers

    # A slow download in flight: the upstream holds it before its first byte, then mid-way.
    [slow_digest] = slow.layer_digests
    first_byte = fakehub.inject_slow_first_byte(path_contains=slow_digest, server="cdn")
    mid_way = fakehub.inject_pause_mid_blob(slow_digest, after_bytes=1_000_000, server="cdn")
    download = asyncio.create_task(client.get(f"/v2/library/slow/blobs/{slow_digest}"))
    await first_byte.wait_hit()

    url = str(client.make_url("/"))
    async with Browser.launch(tmp_path) as browser:
        await browser.set_viewport(*SCREEN)
        await browser.goto(url)
        assert await browser.evaluate("document.title") == "registry-proxy status"

        # The figures on the page are those of /status.
        status: dict[str, Any] = await (await client.get("/status")).json()
        fleet = status["fleet"]
        figures = await browser.evaluate(FIGURES_JS)
        hub = fleet["upstreams"]["docker.io"]
        # whom the proxy pulls as: never a default, the account /status names
        assert figures["Pulls as"] == status["upstreams"]["docker.io"]["account"] == "anonymous"
        assert figures["Counted pulls (fleet)"] == human_count(hub["counted_pulls"])
        assert figures["Pulls remaining"] == human_count(hub["ratelimit"]["remaining"])
        assert figures["Limit per window"] == human_count(100)
        assert figures["Hit ratio"] == percent(fleet["hit_ratio"])
        assert figures["Served from cache"] == human_bytes(fleet["bytes_from_cache"])
        assert figures["Fetched from upstream"] == human_bytes(fleet["bytes_from_upstream"])
        assert figures["Stale serves"] == human_count(1)
        assert figures["Downloads in flight"] == human_count(1)
        text = await browser.evaluate("document.body.innerText")
        assert "library/alpine" in text  # the most pulled repositories
        assert "upstream rate limit reached" in text  # the last stale serve, and why
        assert await browser.evaluate(PROGRESS_JS) == [0]

        # The page refreshes itself: the progress bar moves, the layout does not.
        boxes = await browser.evaluate(SECTION_BOXES_JS)
        first_byte.release()
        await mid_way.wait_hit()
        await browser.wait_until(PROGRESS_JS, lambda values: values == [1_000_000])
        assert await browser.evaluate(SECTION_BOXES_JS) == boxes
        width, height = await browser.screenshot(tmp_path / "status-page.png")
        assert (width, height) == SCREEN
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            shutil.copy(tmp_path / "status-page.png", SCREENSHOT)
        mid_way.release()
        assert await (await download).read() == slow_layer
        await browser.wait_until(PROGRESS_JS, lambda values: values == [])

        # Accessible names for every figure drawn rather than written.
        unnamed = await browser.evaluate(
            "[...document.querySelectorAll('progress, svg')]"
            ".filter(e => !e.getAttribute('aria-label')).length"
        )
        assert unnamed == 0

        # A narrow window: nothing overflows sideways.
        await browser.set_viewport(380, 800)
        await browser.goto(url)
        overflowing = await browser.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
            " > document.documentElement.clientWidth + 0.5).map(e => e.tagName + '.' + e.className)"
        )
        assert overflowing == []
        assert browser.console_errors() == []  # the CSP allowed the inline style and script


async def test_the_page_obeys_the_access_rules(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    locked = await make_proxy(fakehub, auth_tokens=frozenset({"s3cret"}))
    for path in ("/", "/ui", "/ui?fragment=1", "/status"):
        assert (await locked.get(path)).status == 401
        ok = await locked.get(path, headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200
    assert (await locked.get("/healthz")).status == 200

    from proxy.config import parse_networks

    elsewhere = await make_proxy(fakehub, allow_cidrs=parse_networks("10.0.0.0/8"))
    assert (await elsewhere.get("/")).status == 403
    assert (await elsewhere.get("/healthz")).status == 200


async def test_page_escapes_what_clients_sent(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    client = await make_proxy(fakehub)
    services = client.app[SERVICES]
    services.activity.pulled("library/<script>alert(1)</script>")
    page = await (await client.get("/ui")).text()
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# --- the fleet: several instances on one bucket -------------------------------------------------


async def test_status_adds_up_the_fleet(
    fakehub: FakeHub, make_proxy: ProxyFactory, moto_endpoint: Any
) -> None:
    bucket = moto_endpoint.create_bucket()
    location = StorageLocation(bucket=bucket, prefix="cache")
    first = await make_proxy(
        fakehub, location=location, s3_endpoint_url=moto_endpoint.endpoint_url, tag_ttl=0
    )
    second = await make_proxy(
        fakehub, location=location, s3_endpoint_url=moto_endpoint.endpoint_url, tag_ttl=0
    )
    alpine = fakehub.add_image("library/alpine", "3.20")
    golang = fakehub.add_image("library/golang", "1.22")
    await pull(first, "library/alpine", "3.20", alpine.blob_digests)
    await pull(second, "library/golang", "1.22", golang.blob_digests)
    await pull(second, "library/golang", "1.22", golang.blob_digests)
    fleets = [client.app[SERVICES].fleet for client in (first, second)]
    for fleet in fleets:
        await fleet.publish()
        fleet.forget_view()

    statuses = [await (await c.get("/status")).json() for c in (first, second)]
    for status in statuses:
        assert len(status["instances"]) == 2
        assert status["fleet"]["instances"] == 2
        assert status["fleet"]["upstreams"]["docker.io"]["counted_pulls"] == 2
        assert sorted(r["repository"] for r in status["fleet"]["repositories"]) == [
            "library/alpine",
            "library/golang",
        ]
    # ... while each instance reports only its own in the per-instance part.
    assert statuses[0]["upstreams"]["docker.io"]["counted_pulls"] == 1

    # An instance that stopped publishing (it crashed) drops out after a few intervals.
    clock = fleets[0].clock
    fleets[0].clock = lambda: clock() + fleets[0].interval * 4
    fleets[0].forget_view()
    status = await (await first.get("/status")).json()
    assert [i["instance"] for i in status["instances"]] == [fleets[0].instance_id]
    fleets[0].clock = clock

    # One that stops cleanly withdraws its record at once.
    await second.close()
    fleets[0].forget_view()
    status = await (await first.get("/status")).json()
    assert status["fleet"]["instances"] == 1
    assert status["fleet"]["upstreams"]["docker.io"]["counted_pulls"] == 1


async def test_the_page_is_an_operator_endpoint(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    from proxy.config import parse_networks

    client = await make_proxy(fakehub, operator_cidrs=parse_networks("10.9.0.0/16"))
    for path in ("/", "/ui", "/status", "/metrics"):
        assert (await client.get(path)).status == 403, path
    assert (await client.get("/v2/")).status == 200
