"""One upstream blob download, streamed to every client that wants it while it runs.

The download (the *pump*) writes each chunk to a spool file on local disk and to the storage
writer, in one pass. Clients never get chunks handed to them in memory: each reads the spool at its
own pace with ``pread`` and waits for more when it has caught up. So memory stays flat however many
clients follow a fetch and however slow some of them are, and a client that joins late starts from
byte 0 (or its Range) at once.

Correctness: the storage writer hashes as the bytes pass and commits only a verified blob. Each
client is held back from the *last byte of its response* until the whole blob verified, so a
mismatch or a broken upstream stream always reaches the client as an aborted response, never as a
complete one with wrong bytes. Verified is enough: the clients' last bytes go out while the blob
is still being stored (a local file's fsync of 100 MB took a few tenths of a second, every client
of the blob waiting on it); a storage that fails then costs the caching, as anywhere else.

Disk full: when the spool's disk has no room, the rest of the blob is held in memory instead
(``SpoolBuffer``), at most ``MEMORY_WINDOW`` bytes ahead of the slowest reader: the download
waits for readers rather than grow. A reader that does not move for ``STALL_TIMEOUT`` while the
others wait on it is cut off (its client sees an aborted transfer and retries). A client that
comes after memory was let go cannot start from byte 0 here (``complete_from_start``): the blob
cache starts another download for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum

import structlog

from proxy.cache.spool import SpoolBuffer, SpoolSpan
from proxy.concurrency.waits import wait_at_most
from proxy.storage import DigestMismatch, StorageError
from proxy.storage.failsafe import FailSafeWriter

log = structlog.get_logger(__name__)

READ_CHUNK = 256 * 1024
#: With the spool disk full: bytes held in memory ahead of the slowest reader, at most.
MEMORY_WINDOW = 8 * 1024 * 1024
#: ... and how long a reader may hold the download back before it is cut off.
STALL_TIMEOUT = 30.0


class FetchState(Enum):
    STARTING = "starting"  # waiting for the upstream's response headers
    STREAMING = "streaming"
    DONE = "done"  # every byte arrived and verified
    FAILED = "failed"


class BlobFetch:
    """Shared state of one in-flight download; the pump drives it, readers follow it."""

    def __init__(self, digest: str, buffer: SpoolBuffer, *, repository: str = "") -> None:
        self.digest = digest
        self.repository = repository  # the one it was first asked for (for the status page)
        self.size: int | None = None
        self.written = 0
        self.state = FetchState.STARTING
        self.error: BaseException | None = None
        self.committed = False  # the verified blob is in the cache storage
        self.verified = False  # every byte arrived and hashed to the digest (storing may go on)
        self._buffer: SpoolBuffer | None = buffer
        self.prefetch = False  # started before any client asked (proxy.cache.prefetch)
        self.client_asked = False  # a client asked for the blob while it was in flight
        self._changed = asyncio.Condition()
        # Where each reader is (the next byte it needs): memory before the slowest is let go.
        self._positions: dict[int, int] = {}
        self._cut_off: set[int] = set()
        self._reader_ids = itertools.count()

    @property
    def complete_from_start(self) -> bool:
        """Whether a new reader can still get the blob from byte 0 from this download."""
        return self._buffer is not None and self._buffer.complete_from_start

    @property
    def memory_bytes(self) -> int:
        return 0 if self._buffer is None else self._buffer.memory_bytes

    def keep_off_disk(self, detail: str) -> None:
        """The spool has no room for this blob: hold it in memory (before its first byte)."""
        if self._buffer is not None:
            self._buffer.spill(detail)

    # --- the pump's side ------------------------------------------------------------------------

    async def started(self, size: int | None) -> None:
        async with self._changed:
            self.size = size
            self.state = FetchState.STREAMING
            self._changed.notify_all()

    async def append(self, chunk: bytes) -> None:
        assert self._buffer is not None
        await self._buffer.append(chunk)
        async with self._changed:
            self.written += len(chunk)
            self._changed.notify_all()
        if self._buffer.spilled:
            await self._wait_for_readers()

    async def _wait_for_readers(self) -> None:
        """Disk full: hold the download while memory is a window ahead of the slowest reader."""
        buffer = self._buffer
        assert buffer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_TIMEOUT
        while True:
            self._trim()
            if buffer.memory_bytes <= MEMORY_WINDOW:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._cut_off_slowest()
                deadline = loop.time() + STALL_TIMEOUT
                continue
            async with self._changed:
                await wait_at_most(remaining, self._changed.wait())

    def _trim(self) -> None:
        if self._buffer is not None and self._buffer.spilled:
            self._buffer.trim(min(self._positions.values(), default=self.written))

    def _cut_off_slowest(self) -> None:
        slowest = min(self._positions.values())
        for reader, position in list(self._positions.items()):
            if position == slowest:
                self._cut_off.add(reader)
                del self._positions[reader]
        log.warning("blob.reader_cut_off", digest=self.digest, position=slowest)

    @property
    def on_disk(self) -> bool:
        """Whether the download still goes to the spool file (pieces can be placed in it)."""
        return self._buffer is not None and not self._buffer.spilled

    async def place(self, offset: int, data: bytes) -> None:
        """Write bytes of a blob fetched in pieces (``proxy.cache.pieces``) at their offset,
        ahead of the readable prefix. Readers see nothing of them until the pump appends the
        blob in order up to there; what it appends (the same bytes, read back with
        ``read_placed`` and hashed) is what they read."""
        if offset < self.written:
            raise ValueError(f"{self.digest}: placing at {offset}, below {self.written}")
        assert self._buffer is not None
        await self._buffer.place(offset, data)

    async def read_placed(self, offset: int, size: int) -> bytes:
        assert self._buffer is not None
        return await self._buffer.read_placed(offset, size)

    def open_for_sending(self) -> io.FileIO | None:
        """The spool file opened for one reader (``FetchReader.parts``); None without one."""
        return None if self._buffer is None else self._buffer.open_for_sending()

    async def proven(self) -> None:
        """Every byte arrived and matches the digest: readers may send their last bytes, before
        the blob is stored (``finish`` comes once it is)."""
        async with self._changed:
            self.verified = True
            self._changed.notify_all()

    async def finish(self, error: BaseException | None) -> None:
        async with self._changed:
            self.state = FetchState.FAILED if error else FetchState.DONE
            self.error = error
            self.verified = self.verified or error is None
            self._changed.notify_all()
        self._release_spool_if_unused()

    # --- the readers' side ----------------------------------------------------------------------

    async def wait_finished(self) -> None:
        """Wait until the download is over (verified and stored, or failed)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.state in (FetchState.DONE, FetchState.FAILED))

    async def wait_started(self) -> int | None:
        """Wait for the upstream's headers; returns the blob size (None when not announced)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.state is not FetchState.STARTING)
        self._raise_if_failed()
        return self.size

    def reader(self) -> FetchReader:
        """A reader registered now at byte 0 (so the bytes it will read are kept from now on);
        ``FetchReader.close`` lets go of it if it never reads."""
        reader = next(self._reader_ids)
        self._positions[reader] = 0
        return FetchReader(self, reader)

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``start``..``end`` (inclusive; None: to the end of the blob)."""
        reader = self.reader()
        try:
            async for chunk in reader.read(start, end):
                yield chunk
        finally:
            reader.close()

    async def _read(
        self, reader: int, start: int, end: int | None, file: io.FileIO | None = None
    ) -> AsyncIterator[bytes | SpoolSpan]:
        """The bytes in order as they become readable. With ``file`` (the reader's own opening
        of the spool file) those in the file come as spans of it, each as far as readable now,
        and only bytes held in memory (a full disk) as bytes."""
        position = start
        if reader in self._positions:
            self._positions[reader] = position
        while end is None or position <= end:
            until = await self._wait_readable(position, end)
            if reader in self._cut_off:
                raise StorageError(f"{self.digest}: reader fell behind a download held in memory")
            if until is None:
                return  # the blob is complete and the reader has all of it
            buffer = self._buffer
            assert buffer is not None
            part: bytes | SpoolSpan
            if file is not None and position < buffer.on_disk:
                part = SpoolSpan(file, position, min(until, buffer.on_disk) - position)
                position += part.count
            else:
                part = await buffer.read(position, min(READ_CHUNK, until - position))
                if not part:
                    raise StorageError(f"spool of {self.digest} ended early")
                position += len(part)
            if reader in self._positions:
                self._positions[reader] = position
                if buffer.spilled:
                    async with self._changed:  # the download may be waiting for us
                        self._changed.notify_all()
            yield part

    def _unregister(self, reader: int) -> None:
        self._positions.pop(reader, None)
        self._cut_off.discard(reader)
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
            if self.verified or self.state is FetchState.FAILED:
                return True
            return self._sendable_until(end) > position

        async with self._changed:
            await self._changed.wait_for(ready)
        if self.verified:
            # Every byte is here and proven: what happens to the storing does not matter.
            until = self.written if end is None else min(self.written, end + 1)
            return until if until > position else None
        self._raise_if_failed()
        return self._sendable_until(end)

    def _raise_if_failed(self) -> None:
        if self.state is FetchState.FAILED:
            assert self.error is not None
            raise self.error

    def _release_spool_if_unused(self) -> None:
        finished = self.state in (FetchState.DONE, FetchState.FAILED)
        if finished and not self._positions and self._buffer is not None:
            self._buffer.close()
            self._buffer = None


class FetchReader:
    """One client's place in a download (``BlobFetch.reader``)."""

    def __init__(self, fetch: BlobFetch, reader_id: int) -> None:
        self._fetch = fetch
        self.id = reader_id
        self._closed = False
        self._file: io.FileIO | None = None

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start``..``end`` (inclusive; None: to the end), read from the spool."""
        try:
            async for part in self._fetch._read(self.id, start, end):
                assert isinstance(part, bytes)
                yield part
        finally:
            self.close()

    async def parts(
        self, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes | SpoolSpan]:
        """The same bytes, those in the spool file as spans of it for the response to send
        from the file (as a cached blob is: no byte passes through a buffer of the process
        while the client does not take it), those held in memory as bytes."""
        try:
            if self._file is None and self._fetch.on_disk:
                self._file = self._fetch.open_for_sending()
            async for part in self._fetch._read(self.id, start, end, self._file):
                yield part
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._fetch._unregister(self.id)
        if self._file is not None:
            self._file.close()
            self._file = None


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
        writer.verify()
        await fetch.proven()  # the clients' last bytes go now, the storing goes on
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
