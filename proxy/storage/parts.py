"""Reading a stored object as consecutive ranged parts (the S3 backend's ``read``).

One GetObject for a whole blob would tie an S3 connection to one client for as long as that
client takes, and a response that broke off after its first bytes could not be resumed. Reading
the range a client wants as ranged requests of ``part_size`` bytes (large, so that the request
per part costs little next to its transfer) gives three things:

- No pause between parts: the next part is requested while the last quarter of the current one
  streams, so its first bytes are waiting when they are needed.
- Resumption: a part whose body breaks off is asked for again from the first byte not yet
  passed on, up to ``retries`` times in a row; the client never notices. (Objects are
  content-addressed and never rewritten, so the bytes are the same ones.)
- Connections given back while a client does not read: when the consumer of the stream has not
  come back for ``release_after`` seconds, the open responses are closed, and reading starts
  again from where it stopped when the consumer returns. Clients that stop reading therefore
  hold no S3 connection, and cannot starve the pool every other request needs.

Memory per reader: one chunk, plus what the HTTP client buffers of the open responses (tens of
KiB: it stops reading a socket whose buffer is full).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from proxy.storage.base import StorageError

# Large: most layers are one request. A request costs a round trip on S3 (hidden by the
# look-ahead), and much more on S3-compatible servers that read the whole object for each range
# (moto: 16 MiB parts read a 105 MB blob at 170 MB/s, one part at 600 MB/s).
DEFAULT_PART_SIZE = 128 * 1024 * 1024
READ_CHUNK = 64 * 1024  # what a client that stops reading leaves buffered, at most
DEFAULT_RETRIES = 2
DEFAULT_RELEASE_AFTER = 5.0


class PartBody(Protocol):
    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (b"" at the end); StorageError when the response breaks off."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class OpenPart:
    """A ranged response whose headers arrived: its body and the bytes it holds."""

    body: PartBody
    first: int
    last: int  # inclusive, as the server cut it (never past the object's last byte)
    total: int  # the object's size


# open_part(first, last) -> the response for bytes first..last (inclusive), or None when
# ``first`` is at or past the end of the object.
PartOpener = Callable[[int, int], Awaitable[OpenPart | None]]


async def read_parts(
    open_part: PartOpener,
    start: int = 0,
    end: int | None = None,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    chunk_size: int = READ_CHUNK,
    retries: int = DEFAULT_RETRIES,
    release_after: float = DEFAULT_RELEASE_AFTER,
) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` (inclusive; None: to the end of the object), part by part."""
    reader = _PartReader(open_part, start, part_size, retries)
    position = start
    stop = None if end is None else end + 1  # exclusive; the first part tells the object's size
    loop = asyncio.get_running_loop()
    try:
        while stop is None or position < stop:
            part = await reader.part_at(position, stop)
            if part is None:
                return  # the range starts at or past the end of the object
            stop = part.total if stop is None else min(stop, part.total)
            if position >= stop:
                return
            reader.look_ahead(position, stop)
            try:
                chunk = await part.body.read(min(chunk_size, part.last + 1 - position))
            except StorageError:
                reader.broke_off()
                continue
            if not chunk:
                reader.broke_off()  # fewer bytes than the range promised: ask again
                continue
            position += len(chunk)
            reader.advanced(position)
            # A response released while the consumer is away must be freed, with what the HTTP
            # client buffered of it: keep no reference to it across the yield.
            del part
            # The consumer may take long (a slow client) or forever (one that stopped reading):
            # after a while, give the connections back rather than hold them meanwhile.
            timer = loop.call_later(release_after, reader.release)
            try:
                yield chunk
            finally:
                timer.cancel()
    finally:
        reader.release()


class _PartReader:
    """The open parts of one read: the current one, and the next one once asked for."""

    def __init__(self, open_part: PartOpener, origin: int, part_size: int, retries: int) -> None:
        self._open_part = open_part
        self._origin = origin
        self._part_size = part_size
        self._retries = retries
        self._failures = 0  # consecutive broken bodies
        self._current: OpenPart | None = None
        self._ahead: asyncio.Task[OpenPart | None] | None = None
        self._ahead_first = -1

    def _range(self, first: int, stop: int | None) -> tuple[int, int]:
        """From ``first`` to the end of its part. Parts stay where they started, ``part_size``
        apart from the read's start, also when a part is asked for again from its middle (so the
        look-ahead request for the next one still fits)."""
        part_end = first + self._part_size - (first - self._origin) % self._part_size
        last = part_end - 1
        return first, last if stop is None else min(last, stop - 1)

    async def part_at(self, position: int, stop: int | None) -> OpenPart | None:
        """The open part that holds ``position``, opening it if need be."""
        if self._current is not None:
            return self._current
        ahead, self._ahead = self._ahead, None
        if ahead is not None and self._ahead_first == position:
            self._current = await ahead
        else:
            _discard(ahead)
            self._current = await self._open_part(*self._range(position, stop))
        return self._current

    def look_ahead(self, position: int, stop: int) -> None:
        """Ask for the next part once the current one is three quarters through."""
        part = self._current
        assert part is not None
        following = part.last + 1
        if (
            self._ahead is None
            and following < stop
            and part.last + 1 - position <= self._part_size // 4
        ):
            self._ahead_first = following
            self._ahead = asyncio.ensure_future(self._open_part(*self._range(following, stop)))

    def advanced(self, position: int) -> None:
        self._failures = 0
        part = self._current
        if part is not None and position > part.last:
            part.body.close()
            self._current = None

    def broke_off(self) -> None:
        """The current part's body failed: read again from the same position, or give up."""
        self._failures += 1
        if self._current is not None:
            self._current.body.close()
            self._current = None
        if self._failures > self._retries:
            raise StorageError(f"ranged read broke off {self._failures} times in a row")

    def release(self) -> None:
        """Close every open response; reading resumes with a new request where it stopped."""
        if self._current is not None:
            self._current.body.close()
            self._current = None
        ahead, self._ahead = self._ahead, None
        _discard(ahead)


def _discard(ahead: asyncio.Task[OpenPart | None] | None) -> None:
    """Drop a look-ahead request: its response is closed as soon as it arrives.

    (Cancelling it instead could lose a response that arrived in the same loop iteration,
    leaving its connection open.)
    """
    if ahead is not None:
        ahead.add_done_callback(_close_response)


def _close_response(ahead: asyncio.Task[OpenPart | None]) -> None:
    if ahead.cancelled() or ahead.exception() is not None:
        return  # a failed look-ahead is simply not used
    part = ahead.result()
    if part is not None:
        part.body.close()
