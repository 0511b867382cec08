"""The storage circuit breaker: fail fast after an error, probe after the cooldown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.storage import StorageError
from proxy.storage.breaker import CircuitBreakerStorage
from proxy.storage.filesystem import FilesystemStorage


class FlakyStorage(FilesystemStorage):
    """A filesystem backend whose calls fail while ``failing`` is set, counting the calls."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing = False
        self.calls = 0

    async def stat(self, key: str):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.failing:
            raise StorageError("connection refused")
        return await super().stat(key)

    async def check(self) -> None:
        self.calls += 1
        if self.failing:
            raise StorageError("connection refused")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[FlakyStorage]:
    storage = FlakyStorage(tmp_path)
    await storage.open()
    yield storage


async def test_fails_fast_after_an_error_then_probes(flaky: FlakyStorage) -> None:
    clock = Clock()
    breaker = CircuitBreakerStorage(flaky, cooldown=10, clock=clock)
    assert await breaker.stat("blobs/x") is None
    flaky.failing = True
    with pytest.raises(StorageError):
        await breaker.stat("blobs/x")
    calls = flaky.calls
    for _ in range(5):
        with pytest.raises(StorageError, match="recent error: connection refused"):
            await breaker.stat("blobs/x")
    assert flaky.calls == calls  # the backend was not asked while the breaker is open
    flaky.failing = False
    clock.now += 11
    assert await breaker.stat("blobs/x") is None  # the probe goes through and succeeds
    assert not breaker.is_open


async def test_readiness_check_always_reaches_the_backend(flaky: FlakyStorage) -> None:
    clock = Clock()
    breaker = CircuitBreakerStorage(flaky, cooldown=10, clock=clock)
    flaky.failing = True
    with pytest.raises(StorageError):
        await breaker.check()
    assert breaker.is_open
    flaky.failing = False
    await breaker.check()
    assert not breaker.is_open
