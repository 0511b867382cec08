"""Cached blobs going out: sendfile from the local directory, a ranged stream from S3.

Whatever the path, a client gets exactly the bytes it asked for: whole blobs, every kind of
Range, HEADs, many readers at once. A blob on local disk is sent from a file opened before the
response starts, so removing the cache entry mid-transfer costs the client nothing, and a client
that leaves mid-transfer leaves nothing open behind.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.fakehub import FakeHub
from support.moto import MotoServer
from support.proxy_app import Client, ProxyFactory, blob_path
from support.waiting import wait_until

from proxy.cache.keys import blob_key
from proxy.http import sendfile
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest
from proxy.storage.filesystem import FilesystemStorage
from proxy.storage.s3 import S3Storage

WarmProxy = Callable[[bytes], Awaitable[tuple[Client, str]]]

LAYER = os.urandom(3 * 1024 * 1024 + 12_345)  # not a multiple of any chunk or part size
# Bigger than what the kernel buffers on loopback, so a transfer is still running while a test
# does something to it.
BIG_LAYER = os.urandom(48 * 1024 * 1024)


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def warm_proxy(
    backend: str, fakehub: FakeHub, make_proxy: ProxyFactory, request: pytest.FixtureRequest
) -> WarmProxy:
    """``client, digest = await warm_proxy(data)``: a proxy on ``backend`` with the blob cached."""

    async def make(data: bytes) -> tuple[Client, str]:
        digest = fakehub.add_blob(data, repo="library/golang")
        storage = None
        if backend == "s3":
            moto: MotoServer = request.getfixturevalue("moto_endpoint")
            # Small read parts: the blob is read in several, with look-ahead requests.
            storage = S3Storage(
                moto.create_bucket(),
                "cache",
                endpoint_url=moto.endpoint_url,
                read_part_size=1024 * 1024,
            )
        client = await make_proxy(fakehub, storage_backend=storage)
        assert await (await client.get(blob_path(digest))).read() == data  # the miss
        await fakehub.wait_for(lambda: fakehub.cdn_gets(digest) >= 1)
        await wait_until(lambda: client.app[SERVICES].blobs.in_flight == 0, "the download")
        for spy in ("copied", "sendfile_calls"):
            # The miss went out from the download's spool file the same way: not counted.
            if spy in request.fixturenames:
                request.getfixturevalue(spy).clear()
        return client, digest

    return make


RANGES: list[tuple[str, slice]] = [
    # (Range header, slice of the blob it selects)
    ("bytes=0-0", slice(0, 1)),  # first byte
    ("bytes=1000-299999", slice(1000, 300000)),  # middle
    (f"bytes={len(LAYER) - 1}-{len(LAYER) - 1}", slice(len(LAYER) - 1, None)),  # last byte
    (f"bytes={len(LAYER) - 1}-", slice(len(LAYER) - 1, None)),  # open-ended, last byte
    ("bytes=-10", slice(-10, None)),  # suffix
    (f"bytes=-{len(LAYER) + 5}", slice(0, None)),  # suffix longer than the blob
    ("bytes=5-", slice(5, None)),  # open-ended
    (f"bytes=2000-{len(LAYER) * 2}", slice(2000, None)),  # end beyond the blob
]


async def test_full_gets_ranges_and_heads_are_byte_exact(
    warm_proxy: WarmProxy, fakehub: FakeHub
) -> None:
    client, digest = await warm_proxy(LAYER)
    whole = await client.get(blob_path(digest))
    assert whole.status == 200
    assert whole.headers["Content-Length"] == str(len(LAYER))
    assert await whole.read() == LAYER
    for header, selected in RANGES:
        part = await client.get(blob_path(digest), headers={"Range": header})
        expected = LAYER[selected]
        start = selected.start % len(LAYER) if selected.start else 0
        assert part.status == 206, header
        assert part.headers["Content-Range"] == (
            f"bytes {start}-{start + len(expected) - 1}/{len(LAYER)}"
        ), header
        assert part.headers["Content-Length"] == str(len(expected)), header
        assert await part.read() == expected, header
    head = await client.head(blob_path(digest))
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(LAYER))
    assert await head.read() == b""
    unsatisfiable = await client.get(blob_path(digest), headers={"Range": f"bytes={len(LAYER)}-"})
    assert unsatisfiable.status == 416
    assert fakehub.cdn_gets(digest) == 1  # every answer above came from the cache


async def test_concurrent_readers_each_get_their_bytes(
    warm_proxy: WarmProxy, fakehub: FakeHub
) -> None:
    client, digest = await warm_proxy(LAYER)

    async def fetch(header: str | None) -> bytes:
        headers = {"Range": header} if header else {}
        async with client.get(blob_path(digest), headers=headers) as response:
            return await response.read()

    wanted: list[tuple[str | None, slice]] = [(None, slice(None))] * 6
    wanted += RANGES * 2
    bodies = await asyncio.wait_for(asyncio.gather(*(fetch(h) for h, _ in wanted)), 60)
    for (header, selected), body in zip(wanted, bodies, strict=True):
        assert body == LAYER[selected], header
    assert fakehub.cdn_gets(digest) == 1


# --- the local directory: sendfile ------------------------------------------------------------


def cached_file(client: Client, digest: str) -> Path:
    storage = client.app[SERVICES].storage.inner
    assert isinstance(storage, FilesystemStorage)
    return storage.data_dir / blob_key(Digest.parse(digest))


def descriptors_open_on(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in (str(path), f"{path} (deleted)"):
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None]]:
    """(offset, count) of every ``loop.sendfile`` call, which still does its work."""
    calls: list[tuple[int, int | None]] = []
    original = asyncio.BaseEventLoop.sendfile

    async def spy(
        self: asyncio.BaseEventLoop,
        transport: asyncio.WriteTransport,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        **kwargs: Any,
    ) -> int:
        calls.append((offset, count))
        return await original(self, transport, file, offset, count, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "sendfile", spy)
    return calls


@pytest.fixture
def copied(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes sent by each ``_copy_some`` call (copied through the process's buffer)."""
    counts: list[int] = []
    original = sendfile._copy_some

    def spy(*args: Any) -> tuple[int, Any]:
        sent, state = original(*args)
        counts.append(sent)
        return sent, state

    monkeypatch.setattr(sendfile, "_copy_some", spy)
    return counts


def sent_with_sendfile(calls: list[tuple[int, int | None]]) -> int:
    return sum(count or 0 for _, count in calls)


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_local_blobs_are_copied_while_the_client_takes_them(
    warm_proxy: WarmProxy, copied: list[int], sendfile_calls: list[tuple[int, int | None]]
) -> None:
    """Each byte goes once, by copy or by sendfile; a client that reads gets copies."""
    client, digest = await warm_proxy(LAYER)
    assert await (await client.get(blob_path(digest))).read() == LAYER
    part = await client.get(blob_path(digest), headers={"Range": "bytes=1000-299999"})
    assert await part.read() == LAYER[1000:300000]
    assert sum(copied) + sent_with_sendfile(sendfile_calls) == len(LAYER) + 299_000
    assert sum(copied) > 0
    assert descriptors_open_on(cached_file(client, digest)) == 0
    assert sendfile._copying.active == 0


async def test_a_client_following_a_download_is_sent_from_its_spool_file(
    fakehub: FakeHub,
    make_proxy: ProxyFactory,
    copied: list[int],
    sendfile_calls: list[tuple[int, int | None]],
) -> None:
    """The bytes of a download in flight go out from its spool file as a cached blob's do
    (copied while the client takes them, by sendfile while it does not), each byte once:
    none is read into a buffer of its own per client."""
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    paused = fakehub.inject("pause_mid_blob", path_contains=digest, server="cdn", times=1)
    async with client.get(blob_path(digest)) as response:
        await paused.wait_hit()  # the client follows the download as it arrives
        paused.release()
        assert await response.read() == LAYER
    assert sum(copied) + sent_with_sendfile(sendfile_calls) == len(LAYER)
    assert sum(copied) > 0


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_beyond_the_copying_responses_allowed_the_others_use_sendfile(
    warm_proxy: WarmProxy,
    copied: list[int],
    sendfile_calls: list[tuple[int, int | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, digest = await warm_proxy(LAYER)
    monkeypatch.setattr(sendfile, "COPY_TRANSFERS", 1)
    monkeypatch.setattr(sendfile._copying, "active", 1)  # another response is copying
    assert await (await client.get(blob_path(digest))).read() == LAYER
    assert copied == []
    assert sendfile_calls == [(0, len(LAYER))]
    assert sendfile._copying.active == 1


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_a_client_that_reads_as_fast_as_the_server_copies_gets_the_rest_by_sendfile(
    warm_proxy: WarmProxy,
    sendfile_calls: list[tuple[int, int | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When every turn's copy is taken whole, the server is the slower side: after
    ``FAST_READER_TURNS`` such turns, one sendfile sends the rest (cheaper for the server)."""
    client, digest = await warm_proxy(LAYER)
    original = sendfile._copy_some
    step = 4096  # a turn's share small enough for loopback's socket buffers to take whole

    def always_taken(socket_fd: int, file_fd: int, offset: int, end: int) -> Any:
        sent, _ = original(socket_fd, file_fd, offset, min(end, offset + step))
        assert sent == min(step, end - offset), "the socket did not take a small turn"
        return sent, sendfile._Copy.DONE if offset + sent == end else sendfile._Copy.TURN

    monkeypatch.setattr(sendfile, "_copy_some", always_taken)
    assert await (await client.get(blob_path(digest))).read() == LAYER
    copied = sendfile.FAST_READER_TURNS * step
    assert sendfile_calls == [(copied, len(LAYER) - copied)]


async def test_through_tls_nothing_is_written_to_the_socket_itself(
    tmp_path: Path, copied: list[int], sendfile_calls: list[tuple[int, int | None]]
) -> None:
    """Bytes written to a TLS connection's socket would go out unencrypted: such a transport
    only ever gets loop.sendfile (which asyncio runs through the TLS layer)."""

    class TlsTransport(asyncio.Transport):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__({"socket": sock, "sslcontext": ssl.create_default_context()})

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return 0

    @dataclass
    class Request:
        transport: asyncio.Transport

    async def sent(*args: Any, **kwargs: Any) -> int:
        sendfile_calls.append((args[3], args[4]))
        return int(args[4])

    path = tmp_path / "blob"
    path.write_bytes(LAYER)
    with (
        pytest.MonkeyPatch.context() as patch,
        path.open("rb", buffering=0) as file,
        socket.socket() as sock,
    ):
        patch.setattr(asyncio.BaseEventLoop, "sendfile", sent)
        response = sendfile.SendfileResponse()
        await response.send_file(Request(TlsTransport(sock)), file, 10, 1000)  # type: ignore[arg-type]
    assert copied == []
    assert sendfile_calls == [(10, 1000)]
    assert response.body_length == 1000


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_bytes_not_in_the_page_cache_go_with_sendfile(
    warm_proxy: WarmProxy,
    copied: list[int],
    sendfile_calls: list[tuple[int, int | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read that would wait for the disk is not made on the event loop: sendfile sends that
    piece, then the copy goes on."""
    client, digest = await warm_proxy(LAYER)
    reads = 0
    preadv = os.preadv

    def every_other_read_misses(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        nonlocal reads
        reads += 1
        if reads % 2 == 0:
            raise BlockingIOError(errno.EAGAIN, "not in the page cache")
        return preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", every_other_read_misses)
    assert await (await client.get(blob_path(digest))).read() == LAYER
    for header, selected in RANGES:
        part = await client.get(blob_path(digest), headers={"Range": header})
        assert await part.read() == LAYER[selected], header
    assert sendfile_calls and sum(copied) > 0


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_where_reads_cannot_skip_the_disk_everything_goes_with_sendfile(
    warm_proxy: WarmProxy,
    copied: list[int],
    sendfile_calls: list[tuple[int, int | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file system without RWF_NOWAIT: the copy stops at its first read, the kernel sends the
    whole range."""
    client, digest = await warm_proxy(LAYER)

    def unsupported(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "preadv", unsupported)
    assert await (await client.get(blob_path(digest))).read() == LAYER
    part = await client.get(blob_path(digest), headers={"Range": "bytes=1000-299999"})
    assert await part.read() == LAYER[1000:300000]
    assert sum(copied) == 0
    assert sendfile_calls == [(0, len(LAYER)), (1000, 299_000)]


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_a_client_that_stops_reading_costs_no_buffer_in_the_process(
    warm_proxy: WarmProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the client's socket is full, the server waits in sendfile with nothing queued in
    the transport: a stalled client holds its socket's buffers, which are the kernel's, and
    nothing else. When it reads again it gets every byte."""
    client, digest = await warm_proxy(BIG_LAYER)  # more than loopback's socket buffers hold
    waiting: list[asyncio.WriteTransport] = []  # transports of sendfile calls in progress
    original = asyncio.BaseEventLoop.sendfile

    async def spy(
        self: asyncio.BaseEventLoop, transport: asyncio.WriteTransport, *args: Any, **kw: Any
    ) -> int:
        waiting.append(transport)
        try:
            return await original(self, transport, *args, **kw)
        finally:
            waiting.remove(transport)

    monkeypatch.setattr(asyncio.BaseEventLoop, "sendfile", spy)
    async with client.get(blob_path(digest)) as response:
        first = await response.content.readexactly(64 * 1024)
        await wait_until(lambda: bool(waiting), "the server to wait on the stalled client")
        assert waiting[0].get_write_buffer_size() == 0
        rest = await asyncio.wait_for(response.read(), 60)
    assert first + rest == BIG_LAYER


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_without_sendfile_in_the_event_loop_the_bytes_still_match(
    warm_proxy: WarmProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop has no loop.sendfile: the same bytes then go through the response writer."""
    client, digest = await warm_proxy(LAYER)

    async def unsupported(*args: Any, **kwargs: Any) -> int:
        raise NotImplementedError

    monkeypatch.setattr(asyncio.BaseEventLoop, "sendfile", unsupported)
    assert await (await client.get(blob_path(digest))).read() == LAYER
    for header, selected in RANGES:
        part = await client.get(blob_path(digest), headers={"Range": header})
        assert await part.read() == LAYER[selected], header


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_an_entry_removed_mid_transfer_is_still_sent_whole(
    warm_proxy: WarmProxy,
) -> None:
    """An eviction unlinks the cache entry; the response already holds the file open."""
    client, digest = await warm_proxy(BIG_LAYER)
    path = cached_file(client, digest)
    async with client.get(blob_path(digest)) as response:
        first = await response.content.readexactly(1024 * 1024)
        await client.app[SERVICES].storage.delete(blob_key(Digest.parse(digest)))
        assert not path.exists()
        rest = await asyncio.wait_for(response.read(), 60)
    assert first + rest == BIG_LAYER


@pytest.mark.parametrize("backend", ["filesystem"])
async def test_a_client_leaving_mid_sendfile_leaves_the_server_healthy(
    warm_proxy: WarmProxy,
) -> None:
    client, digest = await warm_proxy(BIG_LAYER)
    path = cached_file(client, digest)
    for _ in range(3):
        response = await client.get(blob_path(digest))
        await response.content.readexactly(64 * 1024)
        assert descriptors_open_on(path) == 1  # the transfer is still running
        response.close()  # drops the connection mid-body
        # The server notices at its next write, and closes the file.
        await wait_until(lambda: descriptors_open_on(path) == 0, "the file to be closed")
    assert await (await client.get(blob_path(digest))).read() == BIG_LAYER
    assert (await client.get("/healthz")).status == 200
    assert descriptors_open_on(path) == 0
    assert sendfile._copying.active == 0  # the ones that left gave their place back


async def test_a_cached_blob_holds_its_local_file_while_it_lives(
    warm_proxy: WarmProxy, backend: str
) -> None:
    """``BlobCache.get`` hands out an open file for local storage only: the lookup and the
    opening are one step, so removing the entry afterwards cannot take the bytes away. The file
    is closed when the content is let go."""
    client, digest = await warm_proxy(LAYER)
    services = client.app[SERVICES]
    upstream = services.upstreams.default
    content = await services.blobs.get(upstream, "library/golang", Digest.parse(digest))
    assert content.from_cache and content.size == len(LAYER)
    opened = content.file.file if content.file is not None else None
    if backend == "filesystem":
        assert opened is not None and not opened.closed
        await services.storage.delete(blob_key(Digest.parse(digest)))  # evicted
    else:
        assert opened is None
    assert b"".join([c async for c in content.read(0, None)]) == LAYER
    assert b"".join([c async for c in content.read(10, 19)]) == LAYER[10:20]
    del content
    if opened is not None:
        assert opened.closed
