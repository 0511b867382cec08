"""The storage-failure policy (proxy/storage/failsafe.py) on its own: each call's failure becomes
its "miss" answer, is recorded once, and opens the breaker; a full disk is reported apart and is
no outage. Pulls through the app with each operation failing in turn:
tests/http/test_storage_failures.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
import structlog
from support.clock import Clock
from support.faulty_storage import FaultyStorage

from proxy.storage import DigestMismatch, StorageError, StorageFull
from proxy.storage.failsafe import LOG_INTERVAL, RECENT_ERROR_WINDOW, FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage


@pytest.fixture
async def faulty(tmp_path: Path) -> FaultyStorage:
    storage = FaultyStorage(tmp_path / "cache")
    await storage.open()
    return storage


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
