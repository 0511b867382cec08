"""One upstream blob download, streamed to every client that wants it while it runs.

The download (the *pump*) writes each chunk to a spool file on local disk and to the storage
writer, in one pass. Clients never get chunks handed to them in memory: each reads the spool at its
own pace with ``pread`` and waits for more when it has caught up. So memory stays flat however many
clients follow a fetch and however slow some of them are, and a client that joins late starts from
byte 0 (or its Range) at once.

Correctness: the storage writer hashes as the bytes pass and commits only a verified blob. Each
client is held back from the *last byte of its response* until the whole blob verified, so a
mismatch or a broken upstream stream always reaches the client as an aborted response, never as a
complete one with wrong bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from pathlib import Path

import structlog

from proxy.storage import DigestMismatch, StorageError
from proxy.storage.failsafe import FailSafeWriter

log = structlog.get_logger(__name__)

READ_CHUNK = 256 * 1024


class FetchState(Enum):
    STARTING = "starting"  # waiting for the upstream's response headers
    STREAMING = "streaming"
    DONE = "done"  # every byte arrived and verified
    FAILED = "failed"


class BlobFetch:
    """Shared state of one in-flight download; the pump drives it, readers follow it."""

    def __init__(self, digest: str, spool_path: Path, *, repository: str = "") -> None:
        self.digest = digest
        self.repository = repository  # the one it was first asked for (for the status page)
        self.size: int | None = None
        self.written = 0
        self.state = FetchState.STARTING
        self.error: BaseException | None = None
        self.committed = False  # the verified blob is in the cache storage
        self._spool_path = spool_path
        self._fd: int | None = os.open(spool_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._changed = asyncio.Condition()
        self._readers = 0

    # --- the pump's side ------------------------------------------------------------------------

    async def started(self, size: int | None) -> None:
        async with self._changed:
            self.size = size
            self.state = FetchState.STREAMING
            self._changed.notify_all()

    async def append(self, chunk: bytes) -> None:
        assert self._fd is not None
        await asyncio.to_thread(_pwrite_all, self._fd, chunk, self.written)
        async with self._changed:
            self.written += len(chunk)
            self._changed.notify_all()

    async def finish(self, error: BaseException | None) -> None:
        async with self._changed:
            self.state = FetchState.FAILED if error else FetchState.DONE
            self.error = error
            self._changed.notify_all()
        self._release_spool_if_unused()

    # --- the readers' side ----------------------------------------------------------------------

    async def wait_started(self) -> int | None:
        """Wait for the upstream's headers; returns the blob size (None when not announced)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.state is not FetchState.STARTING)
        self._raise_if_failed()
        return self.size

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``start``..``end`` (inclusive; None: to the end of the blob)."""
        self._readers += 1
        try:
            position = start
            while end is None or position <= end:
                until = await self._wait_readable(position, end)
                if until is None:
                    return  # the blob is complete and the reader has all of it
                assert self._fd is not None
                chunk = await asyncio.to_thread(
                    os.pread, self._fd, min(READ_CHUNK, until - position), position
                )
                if not chunk:
                    raise StorageError(f"spool of {self.digest} ended early")
                position += len(chunk)
                yield chunk
        finally:
            self._readers -= 1
            self._release_spool_if_unused()

    def _sendable_until(self, end: int | None) -> int:
        """Exclusive bound a reader may send up to while the blob is still streaming.

        The last byte of the response (``end``, or the blob's last byte) is held back until the
        whole blob verified, so an unverified response can never complete.
        """
        if end is not None:
            last = end
        elif self.size is not None:
            last = self.size - 1
        else:
            last = self.written - 1
        return min(self.written, last)

    async def _wait_readable(self, position: int, end: int | None) -> int | None:
        """Wait until the reader at ``position`` can send more; the exclusive bound, or None."""

        def ready() -> bool:
            if self.state in (FetchState.DONE, FetchState.FAILED):
                return True
            return self._sendable_until(end) > position

        async with self._changed:
            await self._changed.wait_for(ready)
        self._raise_if_failed()
        if self.state is FetchState.DONE:
            until = self.written if end is None else min(self.written, end + 1)
            return until if until > position else None
        return self._sendable_until(end)

    def _raise_if_failed(self) -> None:
        if self.state is FetchState.FAILED:
            assert self.error is not None
            raise self.error

    def _release_spool_if_unused(self) -> None:
        if self.state in (FetchState.DONE, FetchState.FAILED) and self._readers == 0:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self._spool_path.unlink()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


UpstreamOpener = Callable[
    [], contextlib.AbstractAsyncContextManager[tuple[int | None, AsyncIterator[bytes]]]
]


async def pump(
    fetch: BlobFetch,
    open_upstream: UpstreamOpener,
    open_writer: Callable[[int | None], Awaitable[FailSafeWriter]],
) -> None:
    """Download the blob into the spool and the cache storage, verifying it on the way.

    A storage failure costs only the caching (the fail-safe writer goes on verifying without
    storing); a digest mismatch or a broken upstream stream fails the fetch for every reader.
    """
    writer: FailSafeWriter | None = None
    try:
        async with open_upstream() as (size, chunks):
            writer = await open_writer(size)
            await fetch.started(size)
            async for chunk in chunks:
                await writer.write(chunk)
                await fetch.append(chunk)
        await writer.commit()
        fetch.committed = writer.stores
    except BaseException as exc:
        if writer is not None:
            await writer.abort()
        cancelled = isinstance(exc, asyncio.CancelledError)
        await fetch.finish(StorageError("download cancelled: shutting down") if cancelled else exc)
        if isinstance(exc, DigestMismatch):
            log.error("blob.digest_mismatch", digest=fetch.digest, detail=str(exc))
        if cancelled or not isinstance(exc, Exception):
            raise
        return
    await fetch.finish(None)
