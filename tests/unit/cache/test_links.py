"""proxy.cache.links at its own level: links shared through storage, admission; and what a manifest
refers to (by its media type only)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.cache.keys import link_key
from proxy.cache.links import ContentLinks
from proxy.registry.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_ARTIFACT_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    referenced_digests,
)
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


async def test_a_link_is_shared_through_storage_per_repository_and_upstream(
    tmp_path: Path,
) -> None:
    storage = await open_storage(tmp_path)
    links = ContentLinks(storage)
    assert await links.link(HOST, REPO, [digest(1), digest(2)])
    for d in (digest(1), digest(2)):
        assert await storage.stat(link_key(HOST, REPO, d)) is not None
    # Another instance on the same storage trusts them; another repository or upstream does not.
    other = ContentLinks(storage)
    assert await other.is_linked(HOST, REPO, digest(2))
    assert not await other.is_linked(HOST, "library/other", digest(2))
    assert not await other.is_linked("ghcr.io", REPO, digest(2))


async def test_a_link_storage_did_not_keep_is_known_here_only(tmp_path: Path) -> None:
    storage = await open_storage(tmp_path, failing={digest(2).hex})
    links = ContentLinks(storage)
    assert not await links.link(HOST, REPO, [digest(1), digest(2)])
    assert links.known(HOST, REPO, digest(2))  # this instance knows it all the same
    fresh = ContentLinks(storage)
    assert await fresh.is_linked(HOST, REPO, digest(1))
    assert not await fresh.is_linked(HOST, REPO, digest(2))


def smuggler(media_type: str) -> bytes:
    """A manifest with every kind of descriptor list, whatever its type."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"digest": str(digest(1))},
            "layers": [{"digest": str(digest(2))}, "junk", {"size": 3}],
            "blobs": [{"digest": str(digest(3))}],
            "manifests": [{"digest": str(digest(4))}],
            "subject": {"digest": str(digest(9))},
        }
    ).encode()


@pytest.mark.parametrize(
    ("media_type", "children", "blobs"),
    [
        (OCI_MANIFEST, [], [1, 2]),
        (DOCKER_MANIFEST, [], [1, 2]),
        (OCI_INDEX, [4], []),
        (DOCKER_MANIFEST_LIST, [4], []),
        (OCI_ARTIFACT_MANIFEST, [], [3]),
        ("application/vnd.example.unknown+json", [], []),
    ],
)
def test_references_are_read_by_media_type_only(
    media_type: str, children: list[int], blobs: list[int]
) -> None:
    """An image manifest's ``manifests`` or ``blobs`` field is ignored, as registries ignore it;
    a subject is never a reference (issue 21, item 1)."""
    found = referenced_digests(smuggler(media_type), media_type)
    assert found == ([str(digest(n)) for n in children], [str(digest(n)) for n in blobs])
    # Without a declared type, the document's own mediaType decides.
    assert referenced_digests(smuggler(media_type), None) == found


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
