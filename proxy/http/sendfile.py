"""Response bodies sent from a local file with sendfile(2), and clients that stop reading.

The kernel copies the bytes from the page cache to the socket: no copy through Python, no worker
thread per chunk, and no buffer in the process for a client that reads slowly or not at all (it
waits on its own socket's send buffer, which is the kernel's).

A client that stops reading would still hold its transfer, its place under ``PROXY_MAX_CLIENTS``
and its open file for ever: ``StallWatch`` closes the connection once the client has taken no
byte for ``PROXY_CLIENT_IDLE_TIMEOUT`` seconds while bytes were waiting for it (a frozen CI job,
a paused container). Progress is what the kernel says the client acknowledged (``TCP_INFO``'s
``tcpi_bytes_acked``), so a slow reader is never mistaken for a stalled one, and a response that
waits on the upstream (nothing queued for the client) is not the client's fault. Other clients
of the same blob read their own copy (sendfile, the spool) and never wait for a stalled one.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

from aiohttp import web

# Chunk size when the event loop cannot sendfile (uvloop) and the bytes go through Python.
FALLBACK_CHUNK = 256 * 1024


class SendfileResponse(web.StreamResponse):
    """A streamed response whose body can be a byte range of an open file.

    ``body_length`` is the body bytes sent so far, live, those sent with sendfile included
    (aiohttp's own count misses them, and is only set by ``write_eof``).
    """

    def __init__(self, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(status=status, headers=headers)
        self._sent = 0

    @property
    def body_length(self) -> int:
        return self._sent

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await super().write(data)
        self._sent += len(data)

    async def send_file(
        self, request: web.BaseRequest, file: io.FileIO, offset: int, count: int
    ) -> None:
        """Send ``count`` bytes of ``file`` from ``offset``, after ``prepare()``.

        Raises ConnectionError when the client goes away; the bytes it got are counted.
        """
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if count == 0:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.sendfile(transport, file, offset, count)
        except NotImplementedError:
            await self._send_chunks(file, offset, count)
            return
        except BaseException:
            # asyncio leaves the file position just after the last byte it sent.
            self._sent += max(0, file.tell() - offset)
            raise
        self._sent += count

    async def _send_chunks(self, file: io.FileIO, offset: int, count: int) -> None:
        """The same bytes through the response writer, each chunk read in a worker thread."""
        end = offset + count
        while offset < end:
            chunk = await asyncio.to_thread(
                os.pread, file.fileno(), min(FALLBACK_CHUNK, end - offset), offset
            )
            if not chunk:
                raise EOFError(f"file ended {end - offset} bytes early")
            await self.write(chunk)
            offset += len(chunk)


# Linux's struct tcp_info: tcpi_bytes_acked, a u64 at this offset (since Linux 4.1).
TCP_INFO_SIZE = 128
BYTES_ACKED_OFFSET = 120


class StallWatch:
    """Calls ``on_stall`` (once) when the client of ``transport`` has taken no byte for
    ``timeout`` seconds while bytes were queued for it. Checked every quarter of ``timeout``:
    a stalled client is found between ``timeout`` and 1.25 times it. ``stop()`` when the
    response is over. Off where the socket cannot tell (not TCP, not Linux)."""

    def __init__(
        self, transport: asyncio.BaseTransport, timeout: float, on_stall: Callable[[], None]
    ) -> None:
        self._transport = transport
        self._timeout = timeout
        self._on_stall = on_stall
        self._loop = asyncio.get_running_loop()
        # asyncio's TransportSocket (uvloop's pseudo-socket): getsockopt, fileno, shutdown.
        sock = transport.get_extra_info("socket")
        self._sock: Any = sock if _measurable(sock) else None
        self._handle: asyncio.TimerHandle | None = None
        if self._sock is None:
            return
        self._acked = _bytes_acked(self._sock)
        self._since = self._loop.time()
        self._handle = self._loop.call_later(timeout / 4, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        sock, now = self._sock, self._loop.time()
        assert sock is not None
        try:
            acked, queued = _bytes_acked(sock), _queued(sock, self._transport)
        except OSError:  # the connection is gone: nothing left to watch
            self._handle = None
            return
        if acked != self._acked or not queued:
            self._acked, self._since = acked, now
        elif now - self._since >= self._timeout:
            self._handle = None
            self._on_stall()
            return
        self._handle = self._loop.call_later(self._timeout / 4, self._check)


def _measurable(sock: Any) -> bool:
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return len(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)) >= (
            BYTES_ACKED_OFFSET + 8
        )
    except (OSError, AttributeError):
        return False


def _bytes_acked(sock: Any) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    acked: int = struct.unpack_from("=Q", info, BYTES_ACKED_OFFSET)[0]
    return acked


def _queued(sock: Any, transport: asyncio.BaseTransport) -> bool:
    """Whether bytes wait for the client: in the kernel's send queue or the transport's buffer."""
    unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    buffered = (
        transport.get_write_buffer_size() if isinstance(transport, asyncio.WriteTransport) else 0
    )
    return bool(unsent or buffered)


def cut_off(transport: asyncio.Transport) -> None:
    """End a stalled client's connection so that the send waiting on it fails at once.

    Not ``transport.abort()``: asyncio's sendfile waits on the socket's writability through a
    callback that closing the transport removes, and would then wait for ever. A shutdown makes
    the socket writable with an error (EPIPE), which ends whatever send is waiting; lingering
    off makes the close that follows a reset, which frees what the kernel still holds for it.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
            return
        except OSError:
            pass
    transport.abort()
