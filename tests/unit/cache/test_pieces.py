"""proxy/cache/pieces.py on its own: planning the pieces (sizes, the head, the shared budget), and
the fetch against in-memory ranges a test can break and hold. Through the app against the fake
hub: tests/http/test_pieces.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import AsyncIterator
from typing import Any

from proxy.cache.pieces import (
    EMPTY_BLOB,
    PieceBudget,
    PieceSettings,
    _head_range,
    _split,
    open_in_pieces,
)
from proxy.registry.reference import Digest
from proxy.upstream.client import BlobStream, ContentRange
from proxy.upstream.errors import UpstreamInvalid, UpstreamUnavailable

MiB = 1024 * 1024
BLOB = random.Random(13).randbytes(7 * MiB)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def test_split_makes_equal_pieces_and_none_below_the_minimum() -> None:
    assert [(p.start, p.end) for p in _split(MiB, 7 * MiB, 3)] == [
        (MiB, 3 * MiB),
        (3 * MiB, 5 * MiB),
        (5 * MiB, 7 * MiB),
    ]
    # Uneven: the last piece is the short one; together they cover every byte once.
    uneven = _split(10, 10 + 3 * MiB + 1, 3)
    assert [p.end - p.start for p in uneven] == [MiB + 1, MiB + 1, MiB - 1]
    assert uneven[-1].end == 10 + 3 * MiB + 1
    assert [(p.start, p.end) for p in _split(0, MiB + 5, 4)] == [
        (0, MiB // 2 + 3),
        (MiB // 2 + 3, MiB + 5),
    ]
    assert _split(0, None, 3) == []  # no size: nothing to split
    assert _split(5, 5, 3) == []
    assert _split(0, 100, 0) == []


def test_head_asks_for_a_first_piece_or_the_whole_blob() -> None:
    settings = PieceSettings(pieces=4, threshold=16 * MiB)
    any_digest = Digest("ab" * 32)
    assert _head_range(any_digest, None, settings) == (0, 16 * MiB - 1)  # size unknown
    assert _head_range(any_digest, 100 * MiB, settings) == (0, 25 * MiB - 1)  # equal quarters
    assert _head_range(any_digest, 16 * MiB, settings) == (None, None)  # small: plain GET
    # A zero-length blob has no byte a Range could ask for.
    assert _head_range(Digest(EMPTY_BLOB), None, settings) == (None, None)


def test_budget_grants_what_is_left_and_keeps_a_reserve() -> None:
    budget = PieceBudget(5)
    assert budget.take(3) == 3
    assert budget.take(3, keep=1) == 1
    assert budget.take(3) == 1
    assert budget.take(3) == 0
    budget.give(5)
    assert budget.take(9, keep=3) == 2


class MemoryRanges:
    """A RangeOpener serving ``data``: records each (first, last, url); ``total_known=False``
    answers ``bytes a-b/*``; ``break_first_after`` cuts the first answer's body short."""

    def __init__(
        self, data: bytes, *, total_known: bool = True, break_first_after: int | None = None
    ) -> None:
        self.data = data
        self.total_known = total_known
        self.break_first_after = break_first_after
        self.calls: list[tuple[int | None, int | None, str | None]] = []

    @contextlib.asynccontextmanager
    async def __call__(
        self, first: int | None, last: int | None, url: str | None
    ) -> AsyncIterator[BlobStream]:
        self.calls.append((first, last, url))
        size = len(self.data)
        if first is None:
            body, span = self.data, None
        elif first >= size:
            raise UpstreamInvalid("416", status=416)
        else:
            end = size - 1 if last is None else min(last, size - 1)
            body = self.data[first : end + 1]
            span = ContentRange(first, end, size if self.total_known else None)
        cut = self.break_first_after if len(self.calls) == 1 else None

        async def chunks() -> AsyncIterator[bytes]:
            for offset in range(0, len(body), 64 * 1024):
                if cut is not None and offset >= cut:
                    raise UpstreamUnavailable("connection dropped")
                yield body[offset : offset + 64 * 1024]

        yield BlobStream(len(body), chunks(), span, url or "http://cdn.example/blob")


class Counts:
    def __init__(self) -> None:
        self.pieces = 0
        self.fallbacks = 0

    def piece_fetched(self) -> None:
        self.pieces += 1

    def pieces_fell_back(self) -> None:
        self.fallbacks += 1


class MemoryStore:
    """Where pieces land: a bytearray, checked never to be written twice at one offset."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.placed: set[int] = set()
        self.placed_bytes = 0

    async def place(self, offset: int, data: bytes) -> None:
        assert offset not in self.placed
        self.placed.add(offset)
        self.placed_bytes += len(data)
        self.data[len(self.data) :] = bytes(max(0, offset + len(data) - len(self.data)))
        self.data[offset : offset + len(data)] = data

    async def read_placed(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset : offset + size])


async def fetch_in_pieces(ranges: MemoryRanges, **options: Any) -> bytes:
    async with open_in_pieces(
        ranges,
        digest=Digest(hashlib.sha256(ranges.data).hexdigest()),
        settings=PieceSettings(pieces=4, threshold=MiB),
        budget=PieceBudget(8),
        store=MemoryStore(),
        observer=Counts(),
        **options,
    ) as (size, chunks):
        received = b"".join([chunk async for chunk in chunks])
    assert size in (len(received), None)
    return received


async def test_without_a_total_size_the_rest_comes_as_one_stream() -> None:
    ranges = MemoryRanges(BLOB, total_known=False)
    assert await fetch_in_pieces(ranges) == BLOB
    assert ranges.calls == [(0, MiB - 1, None), (MiB, None, None)]
    # A blob the head held whole: the one stream is refused (416), and that is the end.
    small = MemoryRanges(BLOB[: MiB // 2], total_known=False)
    assert await fetch_in_pieces(small) == BLOB[: MiB // 2]
    assert small.calls == [(0, MiB - 1, None), (MiB // 2, None, None)]


async def test_a_broken_head_is_resumed_where_it_stopped() -> None:
    ranges = MemoryRanges(BLOB, break_first_after=256 * 1024)
    assert await fetch_in_pieces(ranges, size_hint=len(BLOB)) == BLOB
    quarter = len(BLOB) // 4
    assert ranges.calls[0] == (0, quarter - 1, None)
    assert (256 * 1024, quarter - 1, None) in ranges.calls


class HeldRetry(MemoryRanges):
    """The second piece (from 1 MiB) breaks off after 1.5 MiB; its retry waits for ``gate``."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.gate = asyncio.Event()
        self.second_piece_calls = 0

    @contextlib.asynccontextmanager
    async def __call__(
        self, first: int | None, last: int | None, url: str | None
    ) -> AsyncIterator[BlobStream]:
        if first is not None and MiB <= first < 3 * MiB:
            self.second_piece_calls += 1
            if self.second_piece_calls > 1:
                await self.gate.wait()
        async with super().__call__(first, last, url) as stream:
            if first == MiB and self.second_piece_calls == 1:
                yield BlobStream(stream.size, self._cut(stream.chunks), stream.content_range)
            else:
                yield stream

    @staticmethod
    async def _cut(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in chunks:
            if sent >= MiB + MiB // 2:
                raise UpstreamUnavailable("connection dropped")
            sent += len(chunk)
            yield chunk


async def test_the_consumer_reads_only_what_has_landed() -> None:
    """A piece that landed half-way (its stream broke, the retry not back yet) is read up to
    where it landed, never up to its end: bytes past that are not there yet (issue 21,
    mutation: the consumer reading up to the piece's end)."""
    ranges = HeldRetry(BLOB)
    received = bytearray()
    async with open_in_pieces(
        ranges,
        digest=Digest(DIGEST.removeprefix("sha256:")),
        settings=PieceSettings(pieces=4, threshold=MiB),
        budget=PieceBudget(8),
        store=MemoryStore(),
        observer=Counts(),
    ) as (_, chunks):
        async for chunk in chunks:
            received += chunk
            if len(received) >= 2 * MiB + MiB // 2:
                ranges.gate.set()  # the consumer caught up with what landed: let the retry go
    assert bytes(received) == BLOB
    assert ranges.second_piece_calls == 2


class OverlongRanges(MemoryRanges):
    """Ranged answers whose bodies run on past the range they announce (a chunked body the
    upstream did not stop at the range's end), with bytes that belong nowhere."""

    @contextlib.asynccontextmanager
    async def __call__(
        self, first: int | None, last: int | None, url: str | None
    ) -> AsyncIterator[BlobStream]:
        async with super().__call__(first, last, url) as stream:

            async def overlong() -> AsyncIterator[bytes]:
                async for chunk in stream.chunks:
                    yield chunk
                yield b"X" * 100_000

            yield BlobStream(stream.size, overlong(), stream.content_range, stream.url)


async def test_a_piece_never_lands_past_its_end() -> None:
    ranges = OverlongRanges(BLOB)
    store = MemoryStore()
    head = len(BLOB) // 4
    async with open_in_pieces(
        ranges,
        digest=Digest(hashlib.sha256(BLOB).hexdigest()),
        settings=PieceSettings(pieces=4, threshold=MiB),
        budget=PieceBudget(8),
        store=store,
        observer=Counts(),
        size_hint=len(BLOB),
    ) as (size, chunks):
        received = b"".join([chunk async for chunk in chunks])
    assert (size, received) == (len(BLOB), BLOB)
    assert store.placed_bytes == len(BLOB) - head  # each piece exactly, nothing beyond
