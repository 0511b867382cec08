"""Big blobs fetched in Range pieces, through the proxy against the fake hub (the planning and
the fetcher on their own: tests/unit/cache/test_pieces.py).

The blob here is 7 MiB with a 1 MiB threshold and 4 pieces. A client's GET does not tell the
size, so the head asks for the first MiB and the other 6 MiB come in 3 pieces of 2 MiB:
0-1 MiB, 1-3 MiB, 3-5 MiB, 5-7 MiB.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re

import aiohttp
import pytest
from support.fakehub import FakeHub, ServerName
from support.proxy_app import Client, ProxyFactory, blob_path, cached_blobs, downloads_settled

from proxy.cache.pieces import (
    EMPTY_BLOB,
)
from proxy.http.routes import SERVICES

MiB = 1024 * 1024
BLOB = random.Random(13).randbytes(7 * MiB)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PIECES = ["bytes=0-1048575", "bytes=1048576-3145727", "bytes=3145728-5242879"]
PIECES.append("bytes=5242880-7340031")
THIRD_PIECE = 3 * MiB
REST_FROM_THIRD = f"bytes={THIRD_PIECE}-{len(BLOB) - 1}"
PIECE_SETTINGS = {"fetch_pieces": 4, "fetch_piece_threshold": MiB, "prefetch": False}


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
    await downloads_settled(client)
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
    await downloads_settled(client)
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
    await downloads_settled(client)
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
    await downloads_settled(client)
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
    await downloads_settled(client)
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
    await downloads_settled(client)
    assert cached_blobs(client) == []
    # Nothing half-done stays behind: the next request fetches the blob again, correctly.
    assert await read_all(client) == (200, BLOB)
    await downloads_settled(client)
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
