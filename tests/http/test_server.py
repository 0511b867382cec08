"""Bounds on a request's head (proxy/http/server.py): size, line count, time, and connections.

The first tests run the real ``registry-proxy serve`` (that is where the bounds live); the
deadline is tested in process with a short one. Clients here are raw sockets: they send what a
hostile client sends, and read with a bounded timeout whatever the proxy answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from support.fakehub import FakeHub
from support.proxy_process import ProxyProcess
from support.settings import settings_with

from proxy.config import StorageLocation
from proxy.http.app import create_app
from proxy.http.server import MAX_HEADER_BYTES, GuardedRunner, HeaderGuard

READ_TIMEOUT = 10.0
PAD = b"X-Pad: " + b"p" * 8000 + b"\r\n"  # one header line of about 8 KB


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    sock.settimeout(READ_TIMEOUT)
    return sock


def send_head(sock: socket.socket, size: int) -> int:
    """Send a request line and about ``size`` bytes of header lines, never the final CRLF;
    returns what was sent before the proxy closed the connection."""
    sent = 0
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: proxy\r\n")
        while sent < size:
            sock.sendall(PAD)
            sent += len(PAD)
    return sent


def answer(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes the connection (bounded by the timeout)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.fixture
def proxy(fakehub: FakeHub, tmp_path: Path) -> Iterator[ProxyProcess]:
    with ProxyProcess(tmp_path, fakehub.url, extra_env={"PROXY_MAX_CLIENTS": "2"}) as process:
        yield process


async def test_headers_beyond_the_limit_are_refused_at_once(proxy: ProxyProcess) -> None:
    def attack() -> bytes:
        with connect(proxy.port) as sock:
            send_head(sock, 1024 * 1024)  # the attack: 1 MB of headers
            return answer(sock)

    reply = await asyncio.to_thread(attack)
    assert reply.startswith(b"HTTP/1.1 431 "), reply
    assert b"X-Content-Type-Options: nosniff" in reply
    assert proxy.healthz() == 200


async def test_connections_with_unfinished_headers_have_a_cap_of_their_own(
    proxy: ProxyProcess,
) -> None:
    """PROXY_MAX_CLIENTS=2: two connections whose headers never end hold both places of their
    cap; a third is refused with a 503 at once, while complete requests are still served."""

    def attack() -> tuple[bytes, int | None]:
        held = [connect(proxy.port) for _ in range(2)]
        try:
            for sock in held:
                send_head(sock, 1000)
            # A complete request answers whatever the slow ones do...
            assert proxy.healthz() == 200
            with connect(proxy.port) as third:
                send_head(third, 1000)
                refused = answer(third)
            status = proxy.healthz()
        finally:
            for sock in held:
                sock.close()
        return refused, status

    refused, status = await asyncio.to_thread(attack)
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert b"Retry-After: 1" in refused
    assert status == 200


async def test_too_many_header_lines_are_a_client_error(proxy: ProxyProcess) -> None:
    def request() -> bytes:
        lines = b"".join(b"X-H%d: 1\r\n" % n for n in range(100))
        with connect(proxy.port) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: proxy\r\n" + lines + b"\r\n")
            return answer(sock)

    reply = await asyncio.to_thread(request)
    assert reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), reply[:200]
    assert reply.endswith(b"Too many headers received")
    assert b"X-Content-Type-Options: nosniff" in reply


# --- in process: the deadline, bodies, pipelining --------------------------------------------


@contextlib.asynccontextmanager
async def served(hub: FakeHub, tmp_path: Path, guard: HeaderGuard) -> AsyncIterator[int]:
    settings = settings_with(
        url=hub.url, location=StorageLocation(path=tmp_path / "cache"), limit=None, prefetch=False
    )
    runner = GuardedRunner(create_app(settings), guard, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_headers_must_arrive_within_the_deadline(fakehub: FakeHub, tmp_path: Path) -> None:
    guard = HeaderGuard(10, timeout=0.3)
    async with served(fakehub, tmp_path, guard) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: proxy\r\n")
        for _ in range(3):  # a byte now and then does not keep it open
            writer.write(b"X")
            await writer.drain()
        async with asyncio.timeout(READ_TIMEOUT):
            reply = await reader.read()
        writer.close()
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert guard.reading == 0
        assert guard.refused["timeout"] == 1


async def test_bodies_and_pipelined_requests_are_not_headers(
    fakehub: FakeHub, tmp_path: Path
) -> None:
    guard = HeaderGuard(10, max_bytes=4096)
    async with served(fakehub, tmp_path, guard) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"b" * 100_000  # a push: refused by the API, not cut off as headers
        put = b"PUT /v2/x/blobs/uploads/1 HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n"
        writer.write(put % len(body) + body)
        get = b"GET /v2/ HTTP/1.1\r\nHost: proxy\r\n\r\n"
        writer.write(get * 20 + b"GET /v2/ HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(READ_TIMEOUT):
            replies = await reader.read()
        writer.close()
        assert replies.count(b"HTTP/1.1 405 ") == 1, replies[:300]
        assert replies.count(b"HTTP/1.1 200 ") == 21
        assert guard.reading == 0
        assert guard.refused == {"too_large": 0, "timeout": 0, "busy": 0}


def test_the_limit_is_far_above_what_registry_clients_send() -> None:
    assert MAX_HEADER_BYTES >= 32 * 1024
