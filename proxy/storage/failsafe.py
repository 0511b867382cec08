"""The storage-failure policy, in one place: a failing cache never fails a pull.

The caches talk to storage only through ``FailSafeStorage``. It turns every backend failure into
the answer that lets the pull go on from the upstream:

    stat / get / open_local a miss (None); also when the object proved corrupt (its size is not
                            the one committed: ``ObjectCorrupt``, counted through ``on_corrupt``)
    put                     "not stored" (False)
    writer                  a writer that only verifies (``DiscardingWriter``); one that fails
                            mid-stream carries on verifying without storing (``FailSafeWriter``)
    commit                  "not stored" (``stores`` is False afterwards)
    delete, delete_many     nothing deleted
    presigned_url           no redirect (None): the bytes are served through the proxy

Some calls still raise ``StorageError``, because the caller has to know: ``read()`` (its response
has started; the caller aborts it), ``keys()`` and ``list_objects()`` (maintenance scans must not
mistake an outage for an empty cache) and ``check()`` (readiness).

A full disk (``StorageFull``) is not an outage: reads still work and eviction makes room. It is
answered the same way ("not stored") but reported through ``on_full`` instead (the disk-full
alarm counts it, logs it once per interval and wakes the evictor), and it neither opens the
breaker nor makes the instance unready.

Each failure is recorded once: counted (``errors``, and the ``on_error`` hook the metrics use),
logged at most once per ``LOG_INTERVAL``, and remembered for readiness (``recent_error``).

It is also a circuit breaker. When S3 is unreachable every call would wait out connection
timeouts and botocore's retries, several times per pull: after a failure, calls skip the backend
for ``cooldown`` seconds (answering as above at once), then one call probes it. ``check()``
always reaches the backend and closes the breaker when it succeeds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import structlog

from proxy.concurrency.waits import wait_at_most
from proxy.storage.base import (
    BlobWriter,
    DiscardingWriter,
    ListedObject,
    ObjectCorrupt,
    ObjectInfo,
    Storage,
    StorageError,
    StorageFull,
)
from proxy.storage.localfile import LocalFile

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_COOLDOWN = 15.0
# After a storage failure the instance reports not ready for this long.
RECENT_ERROR_WINDOW = 30.0
# A dead S3 endpoint must not write a warning per request.
LOG_INTERVAL = 30.0
# Readiness (`check`) answers within this many seconds: load balancers and orchestrators give
# up on a probe after a few seconds and would then count a slow "no" as a dead instance.
CHECK_DEADLINE = 3.0


class FailSafeStorage:
    def __init__(
        self,
        inner: Storage,
        *,
        cooldown: float = DEFAULT_COOLDOWN,
        on_error: Callable[[], None] | None = None,
        on_full: Callable[[StorageFull], None] | None = None,
        on_corrupt: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_deadline: float = CHECK_DEADLINE,
    ) -> None:
        self.inner = inner
        self.check_deadline = check_deadline
        self.cooldown = cooldown
        self.on_error = on_error
        self.on_full = on_full
        # Hears ("read" or "scrub") for every cached object found not to be what was committed.
        self.on_corrupt = on_corrupt
        self._clock = clock
        self._open_until = 0.0
        self._logged_at: float | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    # --- health ---------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether calls currently skip the backend after a recent failure."""
        return self._clock() < self._open_until

    def recent_error(self) -> str | None:
        """The last failure, if it happened within RECENT_ERROR_WINDOW (readiness reports it)."""
        if self.last_error_at is None or self._clock() - self.last_error_at > RECENT_ERROR_WINDOW:
            return None
        return self.last_error

    def record(self, exc: StorageError, operation: str) -> None:
        """Count, log (throttled) and remember one backend failure, and open the breaker.

        A full disk goes to ``on_full`` instead: it is no reason to stop reading the cache."""
        if isinstance(exc, StorageFull):
            if self.on_full is not None:
                self.on_full(exc)
            return
        now = self._clock()
        self.errors += 1
        self.last_error = str(exc)
        self.last_error_at = now
        self._open_until = now + self.cooldown
        if self.on_error is not None:
            self.on_error()
        if self._logged_at is None or now - self._logged_at > LOG_INTERVAL:
            self._logged_at = now
            log.warning(
                "storage.error",
                operation=operation,
                detail=str(exc),
                note="serving from the upstream without caching",
            )

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], failed: T) -> T:
        if self.is_open:
            return failed
        try:
            return await call()
        except StorageError as exc:
            self.record(exc, operation)
            return failed
        except ObjectCorrupt as exc:
            self.corrupt(str(exc), "read")
            return failed

    def corrupt(self, detail: str, found_by: str) -> None:
        """A cached object was not what was committed and is gone: a miss, fetched again. Not
        an outage (the breaker stays closed), but never quiet."""
        log.error("cache.corrupt", detail=detail, found_by=found_by, note="removed; fetched again")
        if self.on_corrupt is not None:
            self.on_corrupt(found_by)

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the backend; raises StorageError (start-up must fail loudly, not cache nothing)."""
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def check(self) -> None:
        """Raise StorageError unless the backend answers now (readiness), within a deadline.

        A backend that is gone can take its client's whole retry budget to say so (S3: five
        attempts with back-off, 15 s and more); readiness must answer sooner than its checker
        gives up, so no answer within ``check_deadline`` seconds is a failure like any other.
        """
        try:
            if not await wait_at_most(self.check_deadline, self.inner.check()):
                raise StorageError(f"no answer within {self.check_deadline:g} s")
        except StorageError as exc:
            self.record(exc, "check")
            raise
        self._open_until = 0.0

    # --- reads: failure is a miss ---------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._call("stat", lambda: self.inner.stat(key), None)

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        return await self._call("get", lambda: self.inner.get(key), None)

    async def open_local(self, key: str) -> LocalFile | None:
        return await self._call("open_local", lambda: self.inner.open_local(key), None)

    async def verified(self, key: str, size: int) -> None:
        await self._call("verified", lambda: self.inner.verified(key, size), None)

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        return await self._call(
            "presigned_url", lambda: self.inner.presigned_url(key, expires_in), None
        )

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream a byte range; raises StorageError (recorded): the caller's response has begun."""
        try:
            async for chunk in self.inner.read(key, start, end):
                yield chunk
        except StorageError as exc:
            self.record(exc, "read")
            raise

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        """Every key under ``prefix``; raises StorageError (recorded) so a scan never mistakes an
        outage for an empty cache."""
        try:
            async for key in self.inner.keys(prefix):
                yield key
        except StorageError as exc:
            self.record(exc, "keys")
            raise

    async def list_objects(self, prefix: str) -> AsyncIterator[ListedObject]:
        """Every object under ``prefix``; raises StorageError (recorded), as ``keys``."""
        try:
            async for entry in self.inner.list_objects(prefix):
                yield entry
        except StorageError as exc:
            self.record(exc, "list")
            raise

    # --- writes: failure is "not stored" --------------------------------------------------------

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        return await self._call(
            "put",
            lambda: self.inner.put(key, data, content_type=content_type, overwrite=overwrite),
            False,
        )

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self.inner.delete(key), None)

    async def delete_many(self, keys: list[str]) -> bool:
        """Delete every key; False when the backend failed (some may be left)."""
        return await self._call(
            "delete", lambda: self._then_true(self.inner.delete_many(keys)), False
        )

    @staticmethod
    async def _then_true(call: Awaitable[None]) -> bool:
        await call
        return True

    async def writer(
        self,
        key: str,
        expected_hex: str,
        expected_size: int | None = None,
        *,
        content_type: str | None = None,
    ) -> FailSafeWriter:
        inner: BlobWriter = await self._call(
            "writer",
            lambda: self.inner.writer(key, expected_hex, expected_size, content_type=content_type),
            DiscardingWriter(key, expected_hex, expected_size),
        )
        return FailSafeWriter(inner, self)


class FailSafeWriter:
    """A blob writer whose storage failures cost only the caching, never the verification.

    A failed ``write`` detaches: the partial object is aborted and the rest of the stream is only
    hashed, so the clients following the download still learn whether it verified. A failed
    commit leaves ``stores`` False. ``DigestMismatch`` always propagates.
    """

    def __init__(self, inner: BlobWriter, storage: FailSafeStorage) -> None:
        self._inner = inner
        self._storage = storage

    @property
    def stores(self) -> bool:
        """Whether the blob is (or, before commit, will be) in the cache storage."""
        return self._inner.stores

    async def write(self, chunk: bytes) -> None:
        try:
            await self._inner.write(chunk)
        except StorageError as exc:
            self._storage.record(exc, "write")
            self._inner = await self._inner.detach()

    def verify(self) -> None:
        """Raise ``DigestMismatch`` unless the bytes written are exactly the blob (storing
        them, ``commit``, comes after and may still fail: only the caching is lost then)."""
        self._inner.verify()

    async def commit(self) -> None:
        try:
            await self._inner.commit()
        except StorageError as exc:
            self._storage.record(exc, "commit")
            self._inner = await self._inner.detach()

    async def abort(self) -> None:
        try:
            await self._inner.abort()
        except StorageError as exc:
            self._storage.record(exc, "abort")
