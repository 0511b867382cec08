"""A circuit breaker in front of a storage backend.

When S3 is unreachable, every call would wait out connection timeouts and botocore's retries, and
a pull makes several storage calls per request: builds would crawl although the upstream is fine.
After a failure the breaker fails storage calls at once for ``cooldown`` seconds, so the caches go
straight to "serve from upstream without caching"; then it lets one call through to probe.
``check()`` (readiness) always reaches the backend, and closes the breaker when it succeeds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from proxy.storage.base import BlobWriter, ObjectInfo, Storage, StorageError

T = TypeVar("T")

DEFAULT_COOLDOWN = 15.0


class CircuitBreakerStorage(Storage):
    def __init__(
        self,
        inner: Storage,
        *,
        cooldown: float = DEFAULT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.cooldown = cooldown
        self._clock = clock
        self._open_until = 0.0
        self._last_error = ""

    @property
    def is_open(self) -> bool:
        return self._clock() < self._open_until

    def _trip(self, exc: StorageError) -> None:
        self._open_until = self._clock() + self.cooldown
        self._last_error = str(exc)

    def _guard(self) -> None:
        if self.is_open:
            raise StorageError(f"storage unavailable (recent error: {self._last_error})")

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        self._guard()
        try:
            return await operation()
        except StorageError as exc:
            self._trip(exc)
            raise

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._call(lambda: self.inner.stat(key))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self._guard()
        try:
            async for chunk in self.inner.read(key, start, end):
                yield chunk
        except StorageError as exc:
            self._trip(exc)
            raise

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        return await self._call(lambda: self.inner.get(key))

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        return await self._call(
            lambda: self.inner.put(key, data, content_type=content_type, overwrite=overwrite)
        )

    async def writer(
        self,
        key: str,
        expected_hex: str,
        expected_size: int | None = None,
        *,
        content_type: str | None = None,
    ) -> BlobWriter:
        return await self._call(
            lambda: self.inner.writer(key, expected_hex, expected_size, content_type=content_type)
        )

    async def delete(self, key: str) -> None:
        await self._call(lambda: self.inner.delete(key))

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        self._guard()
        async for key in self.inner.keys(prefix):
            yield key

    async def check(self) -> None:
        try:
            await self.inner.check()
        except StorageError as exc:
            self._trip(exc)
            raise
        self._open_until = 0.0

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        if self.is_open:
            return None
        return await self.inner.presigned_url(key, expires_in)
