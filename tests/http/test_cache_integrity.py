"""What the cache holds is served only while it is still what its name says.

A stored manifest whose bytes no longer hash to its digest (a bad disk, a hand edit, a broken
copy of the cache) is dropped and fetched again from upstream, never served.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory, downloads_settled

from proxy.http.routes import SERVICES

REPO = "library/golang"


def stored_manifest(client: TestClient[web.Request, web.Application], digest: str) -> Path:
    """Where the filesystem cache keeps a manifest (``data/manifests/sha256/<2>/<64>``)."""
    root = client.app[SERVICES].settings.storage.location.path
    assert root is not None
    hex_digest = digest.removeprefix("sha256:")
    return root / "data" / "manifests" / "sha256" / hex_digest[:2] / hex_digest


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("by", ["digest", "tag"])
async def test_a_corrupt_stored_manifest_is_fetched_again_never_served(
    fakehub: FakeHub, make_proxy: ProxyFactory, by: str
) -> None:
    image = fakehub.add_image(REPO, "1.22")
    path = f"/v2/{REPO}/manifests/{image.digest if by == 'digest' else '1.22'}"
    first = await make_proxy(fakehub, tag_ttl=3600)
    assert await (await first.get(path, headers=ACCEPT_ALL)).read() == image.manifest
    stored = stored_manifest(first, image.digest)
    assert stored.read_bytes() == image.manifest
    flip_one_byte(stored)

    # A process that has not got the manifest in memory reads the corrupt file.
    fakehub.reset_counts()
    second = await make_proxy(
        fakehub, tag_ttl=3600, location=first.app[SERVICES].settings.storage.location
    )
    response = await second.get(path, headers=ACCEPT_ALL)
    assert response.status == 200
    body = await response.read()
    assert hashlib.sha256(body).hexdigest() == image.digest.removeprefix("sha256:")
    assert response.headers["Docker-Content-Digest"] == image.digest
    # Fetched again by digest (the tag record was fresh: no HEAD), and the cache repaired.
    asked = [(r.method, r.ref) for r in fakehub.matching(kind="manifest") if r.status == 200]
    assert asked == [("GET", image.digest)]
    assert stored.read_bytes() == image.manifest


# --- blobs over 64 KiB (issue 21, item 8) -------------------------------------------------------

BIG = random.Random(8).randbytes(300 * 1024)  # past the small blobs kept (and hashed) in memory


def stored_blob(client: TestClient[web.Request, web.Application], digest: str) -> Path:
    root = client.app[SERVICES].settings.storage.location.path
    assert root is not None
    hex_digest = digest.removeprefix("sha256:")
    return root / "data" / "blobs" / "sha256" / hex_digest[:2] / hex_digest


def counted(client: TestClient[web.Request, web.Application], name: str, **labels: str) -> float:
    registry = client.app[SERVICES].metrics.registry
    return registry.get_sample_value(f"registry_proxy_{name}", labels) or 0.0


async def test_a_truncated_cached_blob_is_a_miss_fetched_again(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Its size is not the one committed: never served (it was, as a complete 200 with the
    shorter length), removed, fetched again; HEAD says the committed size too."""
    digest = fakehub.add_blob(BIG, repo=REPO)
    client = await make_proxy(fakehub)
    url = f"/v2/{REPO}/blobs/{digest}"
    assert await (await client.get(url)).read() == BIG
    await downloads_settled(client)
    stored = stored_blob(client, digest)
    with stored.open("r+b") as file:
        file.truncate(len(BIG) // 2)
    fakehub.reset_counts()
    head = await client.head(url)
    assert head.status == 200 and head.content_length == len(BIG)
    for _ in range(2):
        response = await client.get(url)
        assert response.status == 200
        assert await response.read() == BIG
    assert fakehub.cdn_gets(digest) == 1  # fetched again once, then served from the cache
    await downloads_settled(client)
    assert stored.read_bytes() == BIG
    assert counted(client, "cache_corrupt_total", found_by="read") == 1


async def test_a_cached_blob_grown_past_its_size_is_a_miss_too(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    digest = fakehub.add_blob(BIG, repo=REPO)
    client = await make_proxy(fakehub)
    url = f"/v2/{REPO}/blobs/{digest}"
    assert await (await client.get(url)).read() == BIG
    await downloads_settled(client)
    with stored_blob(client, digest).open("ab") as file:
        file.write(b"junk appended by a broken copy")
    response = await client.get(url)
    assert response.status == 200 and await response.read() == BIG


async def test_the_scrub_removes_a_blob_whose_bytes_changed(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """A flipped byte keeps the size: the background scrub re-hashes cached blobs (bounded in
    bytes per second) and removes what does not match; the next pull fetches it again."""
    digest = fakehub.add_blob(BIG, repo=REPO)
    good = fakehub.add_blob(BIG[::-1], repo=REPO)
    client = await make_proxy(fakehub, scrub_rate=64 * 1024 * 1024)
    for blob, data in ((digest, BIG), (good, BIG[::-1])):
        assert await (await client.get(f"/v2/{REPO}/blobs/{blob}")).read() == data
    await downloads_settled(client)
    stored = stored_blob(client, digest)
    flip_one_byte(stored)
    scrubber = client.app[SERVICES].janitor.scrubber
    assert scrubber is not None
    report = await scrubber.scrub()
    assert report.checked == 2 and report.removed == [f"blobs/sha256/{digest[7:9]}/{digest[7:]}"]
    assert not stored.exists() and stored_blob(client, good).exists()
    assert counted(client, "cache_corrupt_total", found_by="scrub") == 1
    response = await client.get(f"/v2/{REPO}/blobs/{digest}")
    assert await response.read() == BIG
