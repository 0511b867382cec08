"""The storage-failure policy (proxy/storage/failsafe.py): a failing cache never fails a pull.

Unit level: each call's failure becomes its "miss" answer, is recorded once, and opens the
breaker. Through the app: with each storage operation failing in turn, pulls still succeed from
the upstream, nothing wrong is cached, and readiness reports the failure.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from support.cache_scan import scan_directory
from support.clock import Clock
from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory

from proxy.config import StorageLocation
from proxy.http.routes import SERVICES
from proxy.storage import DigestMismatch, ObjectInfo, StorageError, StorageFull
from proxy.storage.base import BlobWriter
from proxy.storage.failsafe import LOG_INTERVAL, RECENT_ERROR_WINDOW, FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage
from proxy.storage.localfile import LocalFile

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


class FaultyStorage(FilesystemStorage):
    """A filesystem backend whose operations named in ``failing`` raise StorageError."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {}
        self.local_files = True

    def _enter(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if operation in self.failing:
            raise StorageError(f"injected failure of {operation}")

    async def stat(self, key: str) -> ObjectInfo | None:
        self._enter("stat")
        return await super().stat(key)

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        self._enter("get")
        return await super().get(key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self._enter("read")
        async for chunk in super().read(key, start, end):
            yield chunk

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        self._enter("put")
        return await super().put(key, data, content_type=content_type, overwrite=overwrite)

    async def writer(
        self,
        key: str,
        expected_hex: str,
        expected_size: int | None = None,
        *,
        content_type: str | None = None,
    ) -> BlobWriter:
        self._enter("writer")
        inner = await super().writer(key, expected_hex, expected_size, content_type=content_type)
        storage = self

        # Fail the write and commit steps from inside the backend's own writer.
        class Writer(type(inner)):  # type: ignore[misc]
            async def _write(self, chunk: bytes) -> None:
                storage._enter("write")
                await super()._write(chunk)

            async def _commit(self) -> None:
                storage._enter("commit")
                await super()._commit()

        inner.__class__ = Writer
        return inner

    async def delete(self, key: str) -> None:
        self._enter("delete")
        await super().delete(key)

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        self._enter("presigned_url")
        return None

    async def open_local(self, key: str) -> LocalFile | None:
        self._enter("open_local")
        if not self.local_files:
            return None  # as a backend without local files (S3): blobs are streamed with read()
        return await super().open_local(key)


@pytest.fixture
async def faulty(tmp_path: Path) -> FaultyStorage:
    storage = FaultyStorage(tmp_path / "cache")
    await storage.open()
    return storage


# --- unit: each call's failure answer -----------------------------------------------------------


async def test_each_failure_becomes_its_miss_answer(faulty: FaultyStorage) -> None:
    errors: list[None] = []
    safe = FailSafeStorage(faulty, cooldown=0, on_error=lambda: errors.append(None))
    faulty.failing = {"stat", "get", "put", "delete", "presigned_url", "writer"}
    assert await safe.stat("blobs/x") is None
    assert await safe.get("blobs/x") is None
    assert await safe.put("blobs/x", b"data") is False
    await safe.delete("blobs/x")
    assert await safe.presigned_url("blobs/x", 60) is None
    writer = await safe.writer("blobs/x", hashlib.sha256(b"data").hexdigest(), 4)
    assert not writer.stores  # only verifies
    await writer.write(b"data")
    await writer.commit()
    assert errors == [None] * 6  # each failure recorded once, for the metric
    assert safe.errors == 6
    assert safe.recent_error() == "injected failure of writer"


async def test_read_keys_and_check_still_raise(faulty: FaultyStorage) -> None:
    safe = FailSafeStorage(faulty, cooldown=0)
    await faulty.put("blobs/x", b"data")
    faulty.failing = {"read"}
    with pytest.raises(StorageError):
        async for _ in safe.read("blobs/x"):
            pass
    assert safe.errors == 1


async def test_failing_write_detaches_but_keeps_verifying(faulty: FaultyStorage) -> None:
    data = b"a" * 1000 + b"b" * 1000
    safe = FailSafeStorage(faulty, cooldown=0)
    writer = await safe.writer("blobs/y", hashlib.sha256(data).hexdigest(), len(data))
    await writer.write(data[:1000])
    assert await faulty.stat("blobs/y") is None  # not visible before commit
    faulty.failing = {"write"}
    await writer.write(data[1000:])  # the backend fails: caching is lost, nothing raised
    assert not writer.stores
    await writer.commit()  # the whole stream still verified
    assert await faulty.stat("blobs/y") is None
    assert safe.errors == 1

    wrong = await safe.writer("blobs/z", hashlib.sha256(data).hexdigest(), len(data))
    await wrong.write(data[:1000])
    await wrong.write(b"c" * 1000)
    with pytest.raises(DigestMismatch):  # verification failures always propagate
        await wrong.commit()


async def test_failing_commit_is_not_stored(faulty: FaultyStorage) -> None:
    safe = FailSafeStorage(faulty, cooldown=0)
    writer = await safe.writer("blobs/y", hashlib.sha256(b"data").hexdigest(), 4)
    await writer.write(b"data")
    faulty.failing = {"commit"}
    await writer.commit()
    assert not writer.stores
    assert await faulty.stat("blobs/y") is None


async def test_fails_fast_after_an_error_then_probes(faulty: FaultyStorage) -> None:
    clock = Clock(1000.0)
    safe = FailSafeStorage(faulty, cooldown=10, clock=clock)
    assert await safe.stat("blobs/x") is None
    faulty.failing = {"stat"}
    assert await safe.stat("blobs/x") is None
    calls = faulty.calls["stat"]
    for _ in range(5):
        assert await safe.stat("blobs/x") is None
    assert faulty.calls["stat"] == calls  # the backend was not asked while the breaker is open
    assert safe.errors == 1
    faulty.failing = set()
    clock.now += 11
    assert await safe.stat("blobs/x") is None  # the probe goes through and succeeds
    assert not safe.is_open
    assert faulty.calls["stat"] == calls + 1


async def test_readiness_check_always_reaches_the_backend(tmp_path: Path) -> None:
    class Unusable(FaultyStorage):
        async def check(self) -> None:
            self._enter("check")

    storage = Unusable(tmp_path)
    clock = Clock(1000.0)
    safe = FailSafeStorage(storage, cooldown=10, clock=clock)
    storage.failing = {"check"}
    with pytest.raises(StorageError):
        await safe.check()
    assert safe.is_open
    storage.failing = set()
    await safe.check()  # reaches the backend although the breaker is open
    assert not safe.is_open


async def test_readiness_check_answers_within_its_deadline(tmp_path: Path) -> None:
    """A backend that does not answer (S3 retrying a vanished endpoint) fails the check in time."""
    released = asyncio.Event()

    class Silent(FaultyStorage):
        async def check(self) -> None:
            await released.wait()

    safe = FailSafeStorage(Silent(tmp_path), cooldown=10, check_deadline=0.05)
    try:
        with pytest.raises(StorageError, match=r"no answer within 0\.05 s"):
            await safe.check()
        assert safe.is_open and safe.last_error == "no answer within 0.05 s"
    finally:
        released.set()


async def test_recent_error_window_and_throttled_log(faulty: FaultyStorage) -> None:
    clock = Clock(1000.0)
    safe = FailSafeStorage(faulty, cooldown=0, clock=clock)
    faulty.failing = {"stat"}
    with structlog.testing.capture_logs() as logs:
        for _ in range(20):
            await safe.stat("blobs/x")
        assert safe.errors == 20
        assert [e["event"] for e in logs] == ["storage.error"]  # one warning per interval
        clock.now += LOG_INTERVAL + 1
        await safe.stat("blobs/x")
        assert [e["event"] for e in logs] == ["storage.error"] * 2
    assert safe.recent_error() is not None
    clock.now += RECENT_ERROR_WINDOW + 1
    assert safe.recent_error() is None


async def test_a_full_disk_is_reported_apart_and_is_no_outage(tmp_path: Path) -> None:
    class FullDisk(FaultyStorage):
        def _enter(self, operation: str) -> None:
            if operation in self.failing:
                raise StorageFull(f"injected: no space left on device ({operation})")

    storage = FullDisk(tmp_path / "full")
    await storage.open()
    full: list[StorageFull] = []
    safe = FailSafeStorage(storage, cooldown=10, on_full=full.append)
    await storage.put("blobs/x", b"cached")
    storage.failing = {"put", "write"}
    assert await safe.put("blobs/y", b"data") is False  # not stored, as any failure
    writer = await safe.writer("blobs/z", hashlib.sha256(b"data").hexdigest(), 4)
    await writer.write(b"data")  # detaches: keeps verifying
    await writer.commit()
    assert not writer.stores
    assert len(full) == 2
    # Not an outage: the breaker stays closed, reads go on, readiness is unaffected.
    assert not safe.is_open
    assert await safe.get("blobs/x") is not None
    assert safe.errors == 0 and safe.recent_error() is None


# --- through the app: every operation failing in turn -------------------------------------------


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


async def test_aborting_a_write_on_a_full_disk_does_not_raise(tmp_path: Path) -> None:
    """Closing a half-written file flushes its buffer, which a full disk refuses: an abort (the
    usual answer to a full disk) must still only discard, or the download fails for everyone."""
    storage = FilesystemStorage(tmp_path / "cache")
    await storage.open()
    safe = FailSafeStorage(storage, cooldown=0)
    writer = await safe.writer("blobs/x", hashlib.sha256(b"data").hexdigest(), 4)
    inner = writer._inner
    handle = inner.handle  # type: ignore[attr-defined]

    class RefusingClose:
        def __getattr__(self, name: str) -> Any:
            return getattr(handle, name)

        def close(self) -> None:
            handle.close()
            raise OSError(28, "No space left on device")

    inner.handle = RefusingClose()  # type: ignore[attr-defined]
    await writer.abort()
    assert list(storage.tmp_dir.iterdir()) == []
