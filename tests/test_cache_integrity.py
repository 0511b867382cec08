"""What the cache holds is served only while it is still what its name says.

A stored manifest whose bytes no longer hash to its digest (a bad disk, a hand edit, a broken
copy of the cache) is dropped and fetched again from upstream, never served.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ProxyFactory
from support.fakehub import FakeHub

from proxy.http.routes import SERVICES
from proxy.registry.manifest import MANIFEST_TYPES

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_TYPES)}
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
