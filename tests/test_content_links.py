"""proxy.cache.links at its own level: what a manifest links, the _refs marker, admission."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.cache.keys import link_key, references_key
from proxy.cache.links import ContentLinks
from proxy.registry.manifest import OCI_INDEX, OCI_MANIFEST, Manifest
from proxy.registry.reference import Digest
from proxy.storage import StorageError
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage
from proxy.upstream.errors import UpstreamNotFound, UpstreamUnavailable

HOST, REPO = "docker.io", "library/golang"


def digest(n: int) -> Digest:
    return Digest.of(bytes([n]))


class PutFailsFor(FilesystemStorage):
    """A directory whose puts fail for keys containing one of ``failing``."""

    def __init__(self, root: Path, failing: set[str]) -> None:
        super().__init__(root)
        self.failing = failing

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        if any(part in key for part in self.failing):
            raise StorageError(f"injected failure for {key}")
        return await super().put(key, data, content_type=content_type, overwrite=overwrite)


async def open_storage(root: Path, failing: set[str] | None = None) -> FailSafeStorage:
    # No circuit breaker: every call reaches the directory, so one failure stays one failure.
    storage = FailSafeStorage(PutFailsFor(root, failing or set()), cooldown=0)
    await storage.open()
    return storage


def image_manifest() -> Manifest:
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": str(digest(1))},
            "layers": [{"digest": str(digest(2))}, {"digest": "sha512:" + "a" * 128}, "junk"],
            "blobs": [{"digest": str(digest(3))}],
            "subject": {"digest": str(digest(9))},
        }
    ).encode()
    return Manifest(data, OCI_MANIFEST, Digest.of(data))


async def test_link_references_links_blobs_and_itself_but_not_the_subject(
    tmp_path: Path,
) -> None:
    storage = await open_storage(tmp_path)
    links = ContentLinks(storage)
    manifest = image_manifest()
    await links.link_references(HOST, REPO, manifest)
    for d in (manifest.digest, digest(1), digest(2), digest(3)):
        assert await storage.stat(link_key(HOST, REPO, d)) is not None
    assert await storage.stat(link_key(HOST, REPO, digest(9))) is None  # the subject
    assert await storage.stat(references_key(HOST, REPO, manifest.digest)) is not None
    # Another instance on the same storage trusts them, the other repository does not.
    other = ContentLinks(storage)
    assert await other.is_linked(HOST, REPO, digest(2))
    assert not await other.is_linked(HOST, "library/other", digest(2))
    assert not await other.is_linked("ghcr.io", REPO, digest(2))


async def test_an_index_links_its_manifests(tmp_path: Path) -> None:
    storage = await open_storage(tmp_path)
    links = ContentLinks(storage)
    data = json.dumps({"mediaType": OCI_INDEX, "manifests": [{"digest": str(digest(5))}]}).encode()
    await links.link_references(HOST, REPO, Manifest(data, OCI_INDEX, Digest.of(data)))
    assert await ContentLinks(storage).is_linked(HOST, REPO, digest(5))


async def test_no_marker_unless_every_link_was_stored(tmp_path: Path) -> None:
    storage = await open_storage(tmp_path, failing={digest(2).hex})
    links = ContentLinks(storage)
    manifest = image_manifest()
    await links.link_references(HOST, REPO, manifest)
    assert links.known(HOST, REPO, digest(2))  # this instance knows it all the same
    # Another instance sees the links that were stored, and no marker claiming the one that
    # was not.
    assert await storage.stat(references_key(HOST, REPO, manifest.digest)) is None
    fresh = ContentLinks(storage)
    assert await fresh.is_linked(HOST, REPO, digest(1))
    assert not await fresh.is_linked(HOST, REPO, digest(2))


async def test_admit_asks_once_and_remembers_a_404(tmp_path: Path) -> None:
    storage = await open_storage(tmp_path)
    links = ContentLinks(storage, negative_ttl=30)
    calls = 0
    gate = asyncio.Event()

    async def missing() -> None:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise UpstreamNotFound("404", status=404)

    waiters = [asyncio.create_task(links.admit(HOST, REPO, digest(7), missing)) for _ in range(10)]
    await asyncio.sleep(0)  # let them all reach the flight
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, UpstreamNotFound) for r in results)
    with pytest.raises(UpstreamNotFound) as remembered:
        await links.admit(HOST, REPO, digest(7), missing)
    assert remembered.value.status == 404
    assert calls == 1


async def test_admit_passes_failures_on_and_links_on_confirmation(tmp_path: Path) -> None:
    storage = await open_storage(tmp_path)
    links = ContentLinks(storage, negative_ttl=30)

    async def down() -> None:
        raise UpstreamUnavailable("unreachable")

    async def there() -> None:
        return None

    with pytest.raises(UpstreamUnavailable):
        await links.admit(HOST, REPO, digest(8), down)
    await links.admit(HOST, REPO, digest(8), there)
    await links.admit(HOST, REPO, digest(8), down)  # linked now
    assert await storage.stat(link_key(HOST, REPO, digest(8))) is not None
