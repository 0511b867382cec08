"""Big blobs fetched in Range pieces: planning, and through the proxy against the fake hub.

The blob here is 7 MiB with a 1 MiB threshold and 4 pieces. A client's GET does not tell the
size, so the head asks for the first MiB and the other 6 MiB come in 3 pieces of 2 MiB:
0-1 MiB, 1-3 MiB, 3-5 MiB, 5-7 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support.fakehub import FakeHub, ServerName
from support.proxy_app import Client, ProxyFactory, blob_path, cached_blobs

from proxy.cache.pieces import (
    EMPTY_BLOB,
    PieceBudget,
    PieceSettings,
    _head_range,
    _split,
    open_in_pieces,
)
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest
from proxy.upstream.client import BlobStream, ContentRange
from proxy.upstream.errors import UpstreamInvalid, UpstreamUnavailable

MiB = 1024 * 1024
BLOB = random.Random(13).randbytes(7 * MiB)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PIECES = ["bytes=0-1048575", "bytes=1048576-3145727", "bytes=3145728-5242879"]
PIECES.append("bytes=5242880-7340031")
THIRD_PIECE = 3 * MiB
REST_FROM_THIRD = f"bytes={THIRD_PIECE}-{len(BLOB) - 1}"
PIECE_SETTINGS = {"fetch_pieces": 4, "fetch_piece_threshold": MiB, "prefetch": False}


# --- planning ----------------------------------------------------------------------------------


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


def test_content_range_is_parsed_strictly() -> None:
    assert ContentRange.parse("bytes 0-99/1000") == ContentRange(0, 99, 1000)
    assert ContentRange.parse("bytes 5-5/*") == ContentRange(5, 5, None)
    assert ContentRange.parse("bytes 0-99/1000").length == 100  # type: ignore[union-attr]
    for bad in (None, "", "bytes */1000", "bytes 9-3/100", "bytes 0-100/100", "items 0-1/2"):
        assert ContentRange.parse(bad) is None


# --- through the proxy ------------------------------------------------------------------------


def counter(client: Client, name: str) -> float:
    value = client.app[SERVICES].metrics.registry.get_sample_value(f"registry_proxy_{name}_total")
    return value or 0.0


def covered(ranges: list[str | None], size: int) -> list[tuple[int, int]]:
    """The byte spans the Range headers asked for, in order (inclusive ends)."""
    found = []
    for header in ranges:
        assert header is not None
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header)
        assert match, header
        found.append((int(match.group(1)), int(match.group(2)) if match.group(2) else size - 1))
    return found


async def read_all(client: Client, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with client.get(blob_path(DIGEST), headers=headers or {}) as response:
        return response.status, await response.read()


CLIENT_RANGES: list[tuple[dict[str, str], bytes]] = [
    ({}, BLOB),
    ({"Range": "bytes=0-99"}, BLOB[:100]),
    ({}, BLOB),
    ({"Range": f"bytes={2 * MiB}-{4 * MiB}"}, BLOB[2 * MiB : 4 * MiB + 1]),
    ({}, BLOB),
    ({"Range": "bytes=-100"}, BLOB[-100:]),
    ({}, BLOB),
    ({"Range": f"bytes={6 * MiB}-"}, BLOB[6 * MiB :]),
]


@pytest.mark.parametrize("redirect", [True, False], ids=["cdn", "registry"])
async def test_big_blob_comes_in_pieces_to_eight_concurrent_clients(
    fakehub: FakeHub, make_proxy: ProxyFactory, redirect: bool
) -> None:
    fakehub.redirect_blobs = redirect
    server: ServerName = "cdn" if redirect else "registry"
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    # The head stalls after 64 KiB: the later pieces land first, and the clients must be given
    # the blob in order all the same.
    head = fakehub.inject(
        "pause_mid_blob",
        path_contains=DIGEST,
        after_bytes=64 * 1024,
        range_start=0,
        server=server,
        times=1,
    )
    pulls = [asyncio.create_task(read_all(client, headers)) for headers, _ in CLIENT_RANGES]
    await head.wait_hit()
    await fakehub.wait_for(
        lambda: sum(r.status == 206 for r in fakehub.matching(server=server)) == 4, timeout=10
    )
    assert not any(p.done() for p in pulls)
    head.release()
    results = await asyncio.wait_for(asyncio.gather(*pulls), timeout=30)
    for (status, body), (headers, expected) in zip(results, CLIENT_RANGES, strict=True):
        assert status == (206 if headers else 200)
        assert body == expected

    assert fakehub.blob_ranges(DIGEST, server) == PIECES
    assert counter(client, "fetch_pieces") == 4
    assert counter(client, "fetch_fallbacks") == 0
    assert fakehub.cdn_auth_violations == 0
    if redirect:
        # One request at the registry; the pieces went to the CDN URL it redirected to.
        assert fakehub.count("GET", kind="blob", status=307) == 1
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == BLOB


async def test_a_known_size_is_split_in_equal_pieces(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """With the size from a manifest (a prefetch), the head is a quarter too."""
    image = fakehub.add_image("library/golang", "1.22", [BLOB])
    client = await make_proxy(fakehub, **{**PIECE_SETTINGS, "prefetch": True})
    response = await client.get("/v2/library/golang/manifests/1.22")
    assert response.status == 200
    await client.app[SERVICES].prefetch.wait_idle()
    quarter = len(BLOB) // 4
    assert covered(fakehub.blob_ranges(image.layer_digests[0]), len(BLOB)) == [
        (i * quarter, (i + 1) * quarter - 1) for i in range(4)
    ]
    status, body = await read_all(client)
    assert (status, body) == (200, BLOB)


async def test_an_upstream_that_ignores_range_sends_one_stream(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    fakehub.inject("ignore_range", path_contains=DIGEST)
    results = await asyncio.gather(*(read_all(client, h) for h, _ in CLIENT_RANGES))
    assert [body for _, body in results] == [expected for _, expected in CLIENT_RANGES]
    assert fakehub.blob_ranges(DIGEST) == [PIECES[0]]  # answered with the whole blob
    assert counter(client, "fetch_fallbacks") == 1
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == BLOB


async def test_a_piece_answered_with_the_whole_blob_falls_back_to_one_stream(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    # Every request from the third piece's offset gets the whole blob (a CDN node without
    # Range support): the fallback stream skips what the client already has.
    fakehub.inject("ignore_range", path_contains=DIGEST, range_start=THIRD_PIECE)
    assert await read_all(client) == (200, BLOB)
    # The piece, then one stream from its start to the end of the blob.
    assert fakehub.blob_ranges(DIGEST)[4:] == [REST_FROM_THIRD]
    assert counter(client, "fetch_fallbacks") == 1
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == BLOB


async def test_a_broken_piece_is_asked_for_again_from_where_it_stopped(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    cut = MiB + 12345
    fakehub.inject(
        "drop_mid_blob",
        path_contains=DIGEST,
        after_bytes=cut,
        range_start=THIRD_PIECE,
        server="cdn",
        times=1,
    )
    assert await read_all(client) == (200, BLOB)
    resumed = f"bytes={THIRD_PIECE + cut}-{5 * MiB - 1}"
    assert sorted(map(str, fakehub.blob_ranges(DIGEST))) == sorted([*PIECES, resumed])
    assert counter(client, "fetch_pieces") == 4
    assert counter(client, "fetch_fallbacks") == 0
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == BLOB


async def test_a_piece_failing_twice_falls_back_to_one_stream(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    failing = fakehub.inject("status", status=500, range_start=THIRD_PIECE, server="cdn", times=2)
    assert await read_all(client) == (200, BLOB)
    assert failing.hits == 2  # the piece, its retry (through the registry)
    assert fakehub.blob_ranges(DIGEST)[-1] == REST_FROM_THIRD
    assert counter(client, "fetch_fallbacks") == 1
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == BLOB


async def test_a_wrong_piece_aborts_every_client_and_caches_nothing(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    fakehub.inject(
        "wrong_bytes", path_contains=DIGEST, range_start=THIRD_PIECE, server="cdn", times=1
    )

    async def aborted(headers: dict[str, str]) -> None:
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_all(client, headers)

    await asyncio.gather(*(aborted(headers) for headers, _ in CLIENT_RANGES))
    assert cached_blobs(client) == []
    # Nothing half-done stays behind: the next request fetches the blob again, correctly.
    assert await read_all(client) == (200, BLOB)
    [stored] = cached_blobs(client)
    assert stored.read_bytes() == BLOB


async def test_pieces_stay_within_the_shared_budget(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """With 4 fetch slots the whole process has one extra connection for pieces."""
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS, max_fetches=4)
    assert await read_all(client) == (200, BLOB)
    assert fakehub.blob_ranges(DIGEST) == [PIECES[0], f"bytes={MiB}-{len(BLOB) - 1}"]


async def test_one_piece_means_one_plain_stream(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **{**PIECE_SETTINGS, "fetch_pieces": 1})
    assert await read_all(client) == (200, BLOB)
    assert fakehub.blob_ranges(DIGEST) == [None]
    assert counter(client, "fetch_pieces") == 0


async def test_a_head_range_refused_with_416_falls_back_to_a_plain_get(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_blob(BLOB, repo="library/golang")
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    fakehub.inject("status", status=416, range_start=0, server="cdn", times=1)
    assert await read_all(client) == (200, BLOB)
    assert fakehub.blob_ranges(DIGEST) == [PIECES[0], None]
    assert counter(client, "fetch_fallbacks") == 1


async def test_an_empty_blob_is_asked_for_without_a_range(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    digest = fakehub.add_blob(b"", repo="library/golang")
    assert digest == f"sha256:{EMPTY_BLOB}"
    client = await make_proxy(fakehub, **PIECE_SETTINGS)
    response = await client.get(blob_path(digest))
    assert (response.status, await response.read()) == (200, b"")
    assert fakehub.blob_ranges(digest) == [None]


# --- the piece fetcher on its own, against ranges served from memory ---------------------------


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

    async def place(self, offset: int, data: bytes) -> None:
        assert offset not in self.placed
        self.placed.add(offset)
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
