"""Big blobs fetched as several concurrent Range requests, handed on in order.

Over a long-distance link one TCP connection is limited by its window and round trip, not by the
line: a 100 MB layer over one connection at 25 MB/s takes 4 s, over four connections about 1 s.
So a blob larger than a threshold is fetched in pieces:

- The *head* request asks for the first piece (``Range: bytes=0-…``). Its answer tells the blob's
  size (``Content-Range``), whether the upstream honours Range at all (a 200 means no: the whole
  blob comes in that one stream, exactly as without pieces) and where the bytes came from after
  redirects (Docker Hub's CDN). The other pieces are asked for there directly, so the registry
  sees one request per blob, as from any client, and the registry's token never goes to the CDN
  (the upstream client sends it only to the registry's own origin).
- The rest of the blob is split among up to ``pieces - 1`` more requests, running at once, each
  written into its place in the download's spool file as it arrives (``PieceStore.place``:
  beyond the prefix readers may see, so the spool needs no more room than for one stream).
- The consumer (the pump: storage writer and spool) gets the blob **in order**: the head as it
  streams, then each piece read back from its place as far as it has landed. So the hashing,
  the verification before commit and the readers' held-back last byte are untouched: the pump
  sees one stream that happens to arrive faster, and readers see exactly the bytes it hashed.

Failures: a piece whose stream breaks, or whose answer is not the range asked for, is asked for
again from where it stopped (once, through the registry: a CDN URL may have expired). A piece
that still fails, or an upstream that answers a piece's Range with the whole blob, makes the
consumer *fall back*: on reaching that piece it fetches the rest of the blob itself as one
stream, and the other pieces are abandoned. Wrong bytes in a piece are caught like wrong bytes in
any stream: the digest does not match, nothing is committed, every reader's response is aborted.

Requests stay bounded: per blob by ``pieces`` (plus one retry per piece and one fallback stream),
and in all by a ``PieceBudget`` of extra connections shared by every download.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import structlog

from proxy.registry.reference import Digest
from proxy.storage import StorageError
from proxy.upstream.client import BlobStream, RegistryClient
from proxy.upstream.errors import UpstreamError, UpstreamInvalid, UpstreamUnavailable

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
# Pieces smaller than this are not worth a request of their own.
MIN_PIECE = 1 * MiB
# Bytes a piece collects before writing them to their place, and the consumer reads back at once.
WRITE_SIZE = 1 * MiB
READ_SIZE = 1 * MiB
# Tries per piece: the first where the head's bytes came from, a retry through the registry.
PIECE_ATTEMPTS = 2
# Tries of the one stream that takes over after a piece failed (or of a broken head piece).
STREAM_ATTEMPTS = 2
# sha256 of nothing: a zero-length blob has no byte a Range could select.
EMPTY_BLOB = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

Chunks = AsyncIterator[bytes]
# (first, last, url) -> an open blob answer; first None: no Range; last None: to the end.
RangeOpener = Callable[
    [int | None, int | None, str | None], AbstractAsyncContextManager[BlobStream]
]


class PieceStore(Protocol):
    """Where pieces land ahead of the consumer: the download's spool file (``BlobFetch``)."""

    async def place(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``, beyond what readers may see."""
        ...

    async def read_placed(self, offset: int, size: int) -> bytes:
        """Read back ``size`` bytes placed at ``offset``."""
        ...


@dataclass(frozen=True, slots=True)
class PieceSettings:
    """How big blobs are split (``PROXY_FETCH_PIECES``, ``PROXY_FETCH_PIECE_THRESHOLD``)."""

    pieces: int = 4  # requests per blob at most, the head included; 1: never split
    threshold: int = 16 * MiB  # blobs up to this size come in one request

    @property
    def enabled(self) -> bool:
        return self.pieces > 1


class PieceObserver(Protocol):
    """Hears what the piece fetcher did (the metrics implement it)."""

    def piece_fetched(self) -> None: ...

    def pieces_fell_back(self) -> None: ...


class PieceBudget:
    """Extra upstream connections for pieces, shared by every download of the process.

    A download takes what it may without waiting (fewer pieces when the budget is short) and
    gives it back when done; ``keep`` leaves some for others (prefetches leave room for the
    downloads clients are waiting on).
    """

    def __init__(self, limit: int) -> None:
        self.free = limit

    def take(self, wanted: int, *, keep: int = 0) -> int:
        granted = max(0, min(wanted, self.free - keep))
        self.free -= granted
        return granted

    def give(self, count: int) -> None:
        self.free += count


def blob_ranges(client: RegistryClient, name: str, digest: Digest) -> RangeOpener:
    """Ranged GETs of one blob through the upstream client (its auth and redirect rules)."""

    def open_range(
        first: int | None, last: int | None, url: str | None
    ) -> AbstractAsyncContextManager[BlobStream]:
        return client.open_blob(name, digest, first=first, last=last, url=url)

    return open_range


@contextlib.asynccontextmanager
async def open_in_pieces(
    open_range: RangeOpener,
    *,
    digest: Digest,
    settings: PieceSettings,
    budget: PieceBudget,
    store: PieceStore,
    observer: PieceObserver,
    size_hint: int | None = None,
    keep: int = 0,
    room: Callable[[int | None], bool] | None = None,
) -> AsyncIterator[tuple[int | None, Chunks]]:
    """Open a blob as ``(size, chunks in order)``, fetching it in pieces when it is big.

    ``size_hint`` (the size a manifest gave) lets the pieces be equal from the start; without it
    the head asks for ``threshold`` bytes and the rest is split once the size is known.
    ``room(total)`` says whether the store can take the whole blob ahead of the consumer (a
    spool disk nearly full cannot): when it cannot, the rest comes as one stream after the head.
    """
    head_range = _head_range(digest, size_hint, settings)
    ranged = head_range[0] is not None
    async with contextlib.AsyncExitStack() as stack:
        try:
            head = await stack.enter_async_context(open_range(*head_range, None))
        except UpstreamInvalid as exc:
            if exc.status != 416 or not ranged:
                raise
            # A Range the upstream could not satisfy (it should have: the range starts at 0).
            log.warning("blob.pieces_fallback", digest=str(digest), reason="416 for the head")
            observer.pieces_fell_back()
            ranged = False
            head = await stack.enter_async_context(open_range(None, None, None))
        span = head.content_range
        if span is None:
            # 200: the whole blob in this one stream (no Range asked, or the upstream ignores it).
            if ranged and (head.size or 0) > settings.threshold:
                log.info("blob.pieces_fallback", digest=str(digest), reason="range ignored")
                observer.pieces_fell_back()
            yield head.size, head.chunks
            return
        if span.start != 0:
            raise UpstreamInvalid(f"blob {digest}: asked for bytes from 0, got {span.start}-")
        if span.total is not None and span.end + 1 >= span.total:
            yield span.total, head.chunks  # the whole blob fitted in the head
            return
        rest = _split(span.end + 1, span.total, settings.pieces - 1)
        extra = budget.take(len(rest), keep=keep) if room is None or room(span.total) else 0
        download = PieceDownload(
            open_range,
            head,
            _split(span.end + 1, span.total, extra),
            digest=digest,
            store=store,
            observer=observer,
        )
        try:
            async with download:
                chunks = download.ordered()
                try:
                    yield span.total, chunks
                finally:
                    await chunks.aclose()
        finally:
            budget.give(extra)


def _head_range(
    digest: Digest, size_hint: int | None, settings: PieceSettings
) -> tuple[int | None, int | None]:
    """The (first, last) of the head request; (None, None) for a plain GET."""
    if digest.hex == EMPTY_BLOB or (size_hint is not None and size_hint <= settings.threshold):
        return None, None
    if size_hint is not None:
        return 0, math.ceil(size_hint / settings.pieces) - 1
    return 0, settings.threshold - 1


@dataclass(slots=True)
class Piece:
    """Bytes ``start``..``end`` (exclusive) of the blob, landed in their place up to ``landed``."""

    start: int
    end: int
    landed: int = 0  # absolute offset: bytes start..landed are in their place
    failure: BaseException | None = None  # set when the piece gave up

    def __post_init__(self) -> None:
        self.landed = self.start

    @property
    def complete(self) -> bool:
        return self.landed >= self.end


def _split(start: int, total: int | None, count: int) -> list[Piece]:
    """Bytes ``start``..``total`` in at most ``count`` equal pieces (none below MIN_PIECE)."""
    if total is None or count <= 0 or start >= total:
        return []
    count = min(count, math.ceil((total - start) / MIN_PIECE))
    size = math.ceil((total - start) / count)
    return [Piece(offset, min(offset + size, total)) for offset in range(start, total, size)]


class PieceDownload:
    """The pieces after the head, fetched at once into their places, read back in order."""

    def __init__(
        self,
        open_range: RangeOpener,
        head: BlobStream,
        pieces: list[Piece],
        *,
        digest: Digest,
        store: PieceStore,
        observer: PieceObserver,
    ) -> None:
        assert head.content_range is not None
        self._open_range = open_range
        self._head = head
        self._head_end = head.content_range.end + 1
        self._total = head.content_range.total
        self._pieces = pieces
        self._digest = digest
        self._store = store
        self._observer = observer
        self._workers: list[asyncio.Task[None]] = []
        # Placing runs in a thread, which a cancelled task cannot stop. Every write is waited
        # for before the consumer takes over with a stream of its own (its bytes go where an
        # abandoned piece's would) and before the download ends (the spool file closes then).
        self._writes: set[asyncio.Future[None]] = set()
        self._progress = asyncio.Event()

    async def __aenter__(self) -> PieceDownload:
        if self._pieces:
            self._workers = [
                asyncio.create_task(self._fetch(piece), name=f"piece {piece.start} {self._digest}")
                for piece in self._pieces
            ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_workers()

    async def _stop_workers(self) -> None:
        """Cancel the workers and wait until no write of theirs is still under way."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._writes:
            await asyncio.wait(list(self._writes))

    # --- the consumer's side: the blob in order -------------------------------------------------

    async def ordered(self) -> AsyncGenerator[bytes, None]:
        """The whole blob in order: the head as it streams, then each piece as it lands."""
        position = 0
        try:
            async for chunk in self._head.chunks:
                chunk = chunk[: self._head_end - position]  # never past its range
                position += len(chunk)
                yield chunk
        except UpstreamUnavailable as exc:
            # The head broke off: ask for the rest of the head's range, once.
            log.info("blob.piece_retry", digest=str(self._digest), piece=0, reason=exc.detail)
        if position < self._head_end:
            async for chunk in self._stream(position, self._head_end):
                position += len(chunk)
                yield chunk
        if self._pieces:
            self._observer.piece_fetched()
        for piece in self._pieces:
            while position < piece.end:
                landed = await self._wait_landed(piece, position)
                if landed is None:
                    # The piece gave up: the rest comes as one stream, the other pieces are moot.
                    log.warning(
                        "blob.pieces_fallback",
                        digest=str(self._digest),
                        at=position,
                        reason=str(piece.failure),
                    )
                    self._observer.pieces_fell_back()
                    await self._stop_workers()
                    async for chunk in self._stream(position, self._total):
                        yield chunk
                    return
                chunk = await self._read(position, min(landed - position, READ_SIZE))
                position += len(chunk)
                yield chunk
        if self._total is None or position < self._total:
            # No pieces were made (no budget, or no total size told): the rest as one stream.
            try:
                async for chunk in self._stream(position, self._total):
                    yield chunk
            except UpstreamInvalid as exc:
                # Without a total (``bytes 0-N/*``) a head that held the whole blob shows only
                # now: nothing is left to ask for.
                if exc.status != 416 or self._total is not None:
                    raise

    async def _wait_landed(self, piece: Piece, position: int) -> int | None:
        """How far the piece has landed beyond ``position``; None when it gave up short of it."""
        while True:
            if piece.landed > position:
                return piece.landed
            if piece.failure is not None:
                return None
            self._progress.clear()
            await self._progress.wait()

    async def _read(self, position: int, size: int) -> bytes:
        # A StorageError, not an OSError: readers following the download must abort their
        # responses, not take it for their own client having gone away.
        try:
            data = await self._store.read_placed(position, size)
        except OSError as exc:
            raise StorageError(f"spool of {self._digest}: {exc}") from exc
        if len(data) != size:
            raise StorageError(f"spool of {self._digest} ended early at {position}")
        return data

    async def _stream(self, start: int, end: int | None) -> Chunks:
        """Bytes ``start``..``end`` (None: to the blob's end) as one stream, resumed once if it
        breaks. An answer with the whole blob (Range ignored) is skipped up to ``start``."""
        position = start
        failure: UpstreamError | None = None
        for _ in range(STREAM_ATTEMPTS):
            last = None if end is None else end - 1
            async with self._open_range(position, last, None) as stream:
                skip = position if stream.content_range is None else 0
                if stream.content_range is not None and stream.content_range.start != position:
                    raise UpstreamInvalid(
                        f"blob {self._digest}: asked for bytes from {position}, "
                        f"got {stream.content_range.start}-"
                    )
                try:
                    async for chunk in stream.chunks:
                        if skip:
                            dropped = min(skip, len(chunk))
                            skip -= dropped
                            chunk = chunk[dropped:]
                        if end is not None:
                            chunk = chunk[: end - position]
                        if chunk:
                            position += len(chunk)
                            yield chunk
                        if end is not None and position >= end:
                            return
                except UpstreamUnavailable as exc:
                    failure = exc
                    log.info("blob.stream_retry", digest=str(self._digest), at=position)
                    continue
            if end is None or position >= end:
                return
            failure = UpstreamUnavailable(f"blob {self._digest}: stream ended at {position}")
        assert failure is not None
        raise failure

    # --- the workers' side: one task per piece --------------------------------------------------

    async def _fetch(self, piece: Piece) -> None:
        try:
            for attempt in range(PIECE_ATTEMPTS):
                # First where the head's bytes came from; a retry through the registry, since a
                # CDN's signed URL may have expired.
                url = self._head.url if attempt == 0 else None
                try:
                    problem = await self._fetch_once(piece, url)
                except UpstreamError as exc:  # no usable answer (after the client's own retries)
                    problem = exc.detail
                if problem is None and piece.complete:
                    self._observer.piece_fetched()
                    return
                reason = problem or "answer ended early"
                log.info(
                    "blob.piece_failed",
                    digest=str(self._digest),
                    at=piece.landed,
                    attempt=attempt + 1,
                    reason=reason,
                )
                if problem == RANGE_IGNORED:
                    break  # asking again would get the whole blob again
            piece.failure = UpstreamInvalid(f"piece from {piece.landed}: {reason}")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # The consumer must learn of every end, including a failing spool disk.
            piece.failure = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._progress.set()

    async def _fetch_once(self, piece: Piece, url: str | None) -> str | None:
        """Fetch the rest of the piece once; what went wrong, or None.

        Problems are returned, not raised, inside the request: the upstream client would count a
        raised failure against the upstream's health (``Backoff``), and a piece that is asked for
        again is no such failure. Failures to get an answer at all are raised (and counted).
        """
        async with self._open_range(piece.landed, piece.end - 1, url) as stream:
            span = stream.content_range
            if span is None:
                return RANGE_IGNORED
            if (span.start, span.end) != (piece.landed, piece.end - 1):
                return f"answered bytes {span.start}-{span.end}"
            # Chunks are collected and joined once per write (growing one buffer copied each
            # byte about three times over: a measurable share of a cold pull's CPU).
            chunks: list[bytes] = []
            collected = 0
            try:
                async for chunk in stream.chunks:
                    chunks.append(chunk)
                    collected += len(chunk)
                    if collected >= WRITE_SIZE:
                        await self._land(piece, chunks)
                        chunks, collected = [], 0
            except UpstreamUnavailable as exc:
                return exc.detail
            finally:
                if chunks:
                    await self._land(piece, chunks)
        return None

    async def _land(self, piece: Piece, chunks: list[bytes]) -> None:
        """Write ``chunks`` at the piece's landed offset and move the offset on."""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) > piece.end - piece.landed:
            data = data[: piece.end - piece.landed]  # never past the piece (chunked bodies)
        write = asyncio.ensure_future(self._store.place(piece.landed, data))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        await asyncio.shield(write)
        piece.landed += len(data)
        self._progress.set()


RANGE_IGNORED = "range ignored (whole blob sent)"
