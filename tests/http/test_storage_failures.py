"""A failing cache never fails a pull: with each storage operation failing in turn, pulls still
succeed from the upstream, nothing wrong is cached and /readyz says what failed; a corrupt stored
manifest is fetched again, never served; a download whose partial cache write vanishes completes
from the spool and caches nothing. The failure policy on its own:
tests/unit/storage/test_failsafe.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from support.cache_scan import scan_directory
from support.fakehub import FakeHub
from support.faulty_storage import FaultyStorage
from support.proxy_app import ProxyFactory, downloads_settled

from proxy.config import StorageLocation
from proxy.http.routes import SERVICES

# Every operation of the storage interface the request path uses, plus the writer's own steps.
OPERATIONS = (
    "stat",
    "get",
    "open_local",
    "read",
    "put",
    "writer",
    "write",
    "commit",
    "delete",
    "presigned_url",
)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_pulls_survive_each_storage_operation_failing(
    operation: str, fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    layer = bytes(range(256)) * 4096  # 1 MiB: several chunks, so "write" fails mid-stream
    image = fakehub.add_image("library/alpine", "3.20", [layer, b"second layer"])
    backend = FaultyStorage(tmp_path / "faulty")
    overrides: dict[str, Any] = {}
    if operation == "presigned_url":
        overrides["blob_redirect"] = True  # (only S3 has URLs; the double pretends)
    client = await make_proxy(
        fakehub,
        storage_backend=backend,
        location=StorageLocation(path=backend.root),
        tag_ttl=0,
        **overrides,
    )
    services = client.app[SERVICES]

    async def pull() -> None:
        manifest = await client.get("/v2/library/alpine/manifests/3.20")
        assert manifest.status == 200, await manifest.text()
        assert await manifest.read() == image.manifest
        for digest, data in zip(image.blob_digests, (image.config, *image.layers), strict=True):
            blob = await client.get(f"/v2/library/alpine/blobs/{digest}")
            assert blob.status == 200, await blob.text()
            assert await blob.read() == data
        await downloads_settled(client)  # a pull is over once its blobs are stored

    if operation in ("open_local", "read", "delete", "presigned_url"):
        await pull()  # these are used only once something is cached
        if operation == "delete":
            # A corrupt cached manifest is dropped (delete) and fetched again.
            [path] = (backend.root / "data" / "manifests").rglob(image.digest.split(":")[1])
            path.write_bytes(b"{}")
            services.manifests._manifests.clear()
    backend.failing = {operation}
    if operation == "read":
        # A cached blob whose read fails mid-response: the transfer is aborted (the headers are
        # out), never completed with missing bytes; the next request is served. (A blob that
        # opens as a local file goes out with sendfile, not read(): the double has none here,
        # so the blob is streamed as from S3.)
        backend.local_files = False
        response = await client.get(f"/v2/library/alpine/blobs/{image.layer_digests[0]}")
        with pytest.raises(Exception):  # noqa: B017
            await response.read()
        backend.failing = set()
        backend.local_files = True
    await pull()
    assert backend.calls.get(operation), f"{operation} was never called"

    ready = await client.get("/readyz")
    assert ready.status == 503, await ready.text()
    assert "injected failure" in (await ready.json())["storage"]
    assert services.storage.errors >= 1

    # The backend recovers; a readiness check closes the breaker. Later pulls work, and what
    # the cache holds is exactly what its names say (the corrupt manifest has been replaced).
    backend.failing = set()
    await services.storage.check()
    services.manifests._manifests.clear()
    await pull()
    report = scan_directory(backend.root)
    assert report.problems == [], report.describe()


async def test_corrupt_manifest_is_refetched_never_served(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/alpine", "3.20")
    client = await make_proxy(fakehub)
    services = client.app[SERVICES]
    path = f"/v2/library/alpine/manifests/{image.digest}"
    assert await (await client.get(path)).read() == image.manifest
    root = services.settings.storage.location.path
    assert root is not None
    [stored] = (root / "data" / "manifests").rglob(image.digest.split(":")[1])
    stored.write_bytes(image.manifest.replace(b"schemaVersion", b"schemaversion"))
    services.manifests._manifests.clear()
    fakehub.reset_counts()
    response = await client.get(path)
    assert await response.read() == image.manifest
    assert fakehub.manifest_gets() >= 1  # fetched again from the upstream
    assert stored.read_bytes() == image.manifest


async def blob_write_under_way(root: Path) -> Path:
    """The blob's partial write in ``tmp/``: the file holding at least half of the MiB sent so
    far (link and record writes pass through ``tmp/`` too, at any moment)."""
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(FileNotFoundError):
                found = [p for p in (root / "tmp").iterdir() if p.stat().st_size >= 512 * 1024]
                if found:
                    [partial] = found
                    return partial
            await asyncio.sleep(0.01)


async def test_a_download_whose_partial_write_vanishes_completes_and_caches_nothing(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Whatever removed it (a cleaner that could not see the writer's lock, an operator), the
    client's download completes from the spool; the blob is simply not cached, and the storage
    failure is counted like any other."""
    data = os.urandom(2 * 1024 * 1024)
    digest = fakehub.add_blob(data, repo="library/golang")
    client = await make_proxy(fakehub, fetch_pieces=1)
    services = client.app[SERVICES]
    root = services.settings.storage.location.path
    assert root is not None
    paused = fakehub.inject("pause_mid_blob", path_contains=digest, server="cdn", times=1)
    async with client.get(f"/v2/library/golang/blobs/{digest}") as response:
        assert response.status == 200
        await paused.wait_hit()
        (await blob_write_under_way(root)).unlink()
        paused.release()
        assert await response.read() == data
    await downloads_settled(client)
    assert not (root / "data" / "blobs" / "sha256" / digest[7:9] / digest[7:]).exists()
    assert services.storage.errors == 1
