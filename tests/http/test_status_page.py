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
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from support.browser import Browser
from support.fakehub import FakeHub
from support.paths import DOCS
from support.proxy_app import ACCEPT_ALL, Client, ProxyFactory, downloads_settled

from proxy.config import CacheLimit, StorageLocation
from proxy.config_values import human_bytes
from proxy.http.routes import SERVICES
from proxy.ops.status_page import ago, human_count, percent

SCREENSHOT = DOCS / "status-page.png"
SCREEN = (1280, 1000)


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
    await downloads_settled(client)  # a pull is over once its blobs are stored


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
    fakehub.inject("status", status=429, method="HEAD", path_contains="library/golang", times=1)
    stale = await client.get("/v2/library/golang/manifests/1.22", headers=ACCEPT_ALL)
    assert "Warning" in stale.headers

    # A slow download in flight: the upstream holds it before its first byte, then mid-way.
    [slow_digest] = slow.layer_digests
    first_byte = fakehub.inject("slow_first_byte", path_contains=slow_digest, server="cdn")
    mid_way = fakehub.inject(
        "pause_mid_blob", path_contains=slow_digest, after_bytes=1_000_000, server="cdn"
    )
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


# --- every figure on the page is read from a key /status has --------------------------------------


class PageFigures(HTMLParser):
    """What the page shows, by section: its figures (label -> text), progress bars, table rows
    and notes; and the header line."""

    TEXTS = ("header", "h2", "dt", "dd", "td", "p")

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self.header = ""
        self._section: dict[str, Any] = {}
        self._row: list[str] | None = None
        self._label = ""
        self._open: list[tuple[str, list[str]]] = []  # elements whose text is collected

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self._section = {"figures": {}, "bars": [], "rows": [], "notes": [], "chart": []}
        elif tag == "progress":
            bar = (attributes.get("max"), attributes.get("value"), attributes.get("aria-label"))
            self._section["bars"].append(bar)
        elif tag == "svg":
            self._section["chart"].append(attributes.get("aria-label"))
        elif tag == "tr":
            self._row = []
        if tag in self.TEXTS:
            self._open.append((tag, []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row:
            self._section["rows"].append(self._row)
        if not self._open or self._open[-1][0] != tag:
            return
        _, parts = self._open.pop()
        text = " ".join("".join(parts).split())
        if tag == "header":
            self.header = text
        elif tag == "h2":
            self.sections[text] = self._section
        elif tag == "dt":
            self._label = text
        elif tag == "dd":
            self._section["figures"][self._label] = text
        elif tag == "td" and self._row is not None:
            self._row.append(text)
        elif tag == "p" and not any(name == "header" for name, _ in self._open):
            self._section["notes"].append(text)

    def handle_data(self, data: str) -> None:
        for _, parts in self._open:
            parts.append(data)


def expected_page(status: dict[str, Any], now: float) -> dict[str, dict[str, Any]]:
    """Every figure the page should show, read from /status by its own keys."""
    fleet = status["fleet"]
    sections: dict[str, dict[str, Any]] = {}
    for host, hub in fleet["upstreams"].items():
        reading = hub["ratelimit"]
        sections[f"Upstream quota: {host}"] = {
            "figures": {
                "Pulls as": status["upstreams"][host]["account"],
                "Pulls remaining": human_count(reading["remaining"]),
                "Limit per window": human_count(reading["limit"]),
                "Counted pulls (fleet)": human_count(hub["counted_pulls"]),
                "Upstream errors": human_count(hub["errors"]),
            },
            "bars": [],
            "rows": [],
            "notes": [
                f"Read {ago(reading['at'], now)} from {reading['source']}; "
                f"window {int(reading['window']) // 3600} h."
            ],
            "counted_in_chart": sum(hub["pulls_by_minute"].values()),
        }
    cache = status["cache"]
    size, limit = cache["bytes"], cache["limit_bytes"]
    size_text = f"{human_bytes(size)} of {human_bytes(limit)}"
    sections["Cache"] = {
        "figures": {
            "Hit ratio": percent(fleet["hit_ratio"]),
            "Served from cache": human_bytes(fleet["bytes_from_cache"]),
            "Fetched from upstream": human_bytes(fleet["bytes_from_upstream"]),
            "Cache size": human_bytes(size),
        },
        "bars": [(str(limit), str(size), f"Cache size: {size_text}")],
        "rows": [],
        "notes": [f"Cache size {size_text}."],
        "chart": [],
    }
    download_rows: list[list[str]] = []
    download_bars: list[tuple[str | None, str | None, str]] = []
    for download in fleet["downloads"]:
        done, size = human_bytes(download["bytes"]), download["size"]
        label = f"{download['repository']} {download['digest'][7:19]}: {done}"
        if size is None:  # not known before the upstream's first byte: no bar length
            download_rows.append([download["repository"], done, ""])
            download_bars.append((None, None, label))
        else:
            download_rows.append([download["repository"], f"{done} / {human_bytes(size)}", ""])
            bar = (str(size), str(download["bytes"]), f"{label} of {human_bytes(size)}")
            download_bars.append(bar)
    sections["Right now"] = {
        "figures": {
            "Downloads in flight": human_count(len(fleet["downloads"])),
            "Stale serves": human_count(fleet["stale"]),
            "Storage errors": human_count(status["storage_errors"]),
        },
        "bars": download_bars,
        "rows": download_rows,
        "notes": [],
        "chart": [],
    }
    sections["Most pulled repositories"] = {
        "figures": {},
        "bars": [],
        "rows": [[r["repository"], human_count(r["pulls"])] for r in fleet["repositories"]],
        "notes": ["Manifest requests by tag, since each instance started."],
        "chart": [],
    }
    sections["Last stale serves"] = {
        "figures": {},
        "bars": [],
        "rows": [
            [
                ago(e["at"], now),
                f"{e['repository']}:{e['reference']}",
                e["why"].split('"')[1].removeprefix("served from cache: "),
            ]
            for e in fleet["recent_stale"]
        ],
        "notes": [],
        "chart": [],
    }
    sections["Last upstream errors"] = {
        "figures": {},
        "bars": [],
        "rows": [
            [ago(e["at"], now), f"{e['upstream']} {e['method']}", f"answered {e['status']}"]
            for e in fleet["recent_errors"]
        ],
        "notes": [],
        "chart": [],
    }
    sections["Instances"] = {
        "figures": {},
        "bars": [],
        "rows": [
            [
                i["instance"] + (" (this one)" if i["instance"] == status["instance"] else ""),
                ago(i["published_at"], now),
                human_count(i["counted_pulls"]),
                human_count(i["hits"]),
                human_count(i["downloads"]),
            ]
            for i in status["instances"]
        ],
        "notes": [
            f"Each instance reports every {int(fleet['publish_interval'])} s; one that stops "
            "reporting drops out after a few intervals."
        ],
        "chart": [],
    }
    return sections


async def test_every_figure_on_the_page_is_the_one_status_has(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """The page is compared with /status figure by figure, the cache's cap and its bar included:
    a figure read from a key /status does not have would show a default, silently."""
    fakehub.set_rate_limit(100)
    alpine = fakehub.add_image("library/alpine", "3.20", [b"a" * 300_000])
    golang = fakehub.add_image("library/golang", "1.22", [b"g" * 200_000])
    slow = fakehub.add_image("library/slow", "1", [os.urandom(2_000_000)])
    client = await make_proxy(
        fakehub, tag_ttl=0, read_timeout=60, limit=CacheLimit(max_bytes=2 * 1024**3)
    )
    for _ in range(2):
        await pull(client, "library/alpine", "3.20", alpine.blob_digests)
    await pull(client, "library/golang", "1.22", golang.blob_digests)
    fakehub.inject("status", status=429, method="HEAD", path_contains="library/golang", times=1)
    assert "Warning" in (await client.get("/v2/library/golang/manifests/1.22")).headers
    [slow_digest] = slow.layer_digests
    held = fakehub.inject("slow_first_byte", path_contains=slow_digest, server="cdn")
    download = asyncio.create_task(client.get(f"/v2/library/slow/blobs/{slow_digest}"))
    await held.wait_hit()
    janitor = client.app[SERVICES].janitor
    await janitor.evict()  # an inventory: the cache size is known from then on

    status: dict[str, Any] = await (await client.get("/status")).json()
    assert status["cache"]["limit_bytes"] == 2 * 1024**3  # the cap is set: the page must say so
    page = PageFigures()
    page.feed(await (await client.get("/")).text())
    now = time.time()
    shown = {
        title: {**section, "chart": None, "counted_in_chart": None}
        if title.startswith("Upstream quota")
        else section
        for title, section in page.sections.items()
    }
    expected = expected_page(status, now)
    for title, section in expected.items():
        if title.startswith("Upstream quota"):
            label = page.sections[title]["chart"][0]
            assert f": {section['counted_in_chart']} in all," in label
            section["chart"], section["counted_in_chart"] = None, None
    assert shown.keys() == expected.keys()
    for title, section in expected.items():
        assert shown[title] == section, title
    instances = status["fleet"]["instances"]
    assert page.header.startswith(
        f"registry-proxy {instances} instance{'s' if instances != 1 else ''} · "
        f"storage {status['storage']} · updated"
    )

    held.release()
    await (await download).read()


async def test_the_page_answers_when_the_client_cap_is_full(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Operators need the page most when the proxy is full, like /status."""
    digest = fakehub.add_blob(os.urandom(48 * 1024 * 1024), repo="library/golang")
    client = await make_proxy(fakehub, max_clients=1)
    path = f"/v2/library/golang/blobs/{digest}"
    await (await client.get(path)).read()  # cached
    held = await client.get(path)  # a client that stops reading keeps its place
    assert held.status == 200
    assert (await client.get(path)).status == 503
    for page in ("/", "/ui", "/ui?fragment=1", "/status"):
        answer = await client.get(page)
        assert answer.status == 200, page
    held.close()
