"""Response bodies sent from a local file, and clients that stop reading.

A blob in the local directory goes out in two ways, switching as the client reads:

- While the client's socket takes bytes, they are copied to it from the page cache through one
  buffer of the process (``_copy_some``: a read that never waits for the disk, then a write that
  never waits for the client). On one machine (a laptop's docker-compose, a build host) this is
  what makes a warm pull fastest: the client then reads bytes the CPU has just written, where
  with sendfile(2) it reads them from the page cache in memory. Measured with skopeo, whose own
  work is what bounds a pull here: 0.89-0.90 s against 0.96-1.01 s with sendfile alone,
  distribution 0.92-0.95 s (docs/benchmarks.md). It costs the server a copy, about 0.06
  CPU-seconds per 212 MB.
- When the socket is full (a client slower than the server, or one that stopped reading) or the
  bytes are not in the page cache, the next piece goes by sendfile, which waits on the socket
  with nothing held in the process: the kernel sends from the page cache when the client makes
  room. Then copying resumes. No byte is ever left in a buffer here, so a thousand stalled
  clients cost their sockets and nothing else, as with sendfile alone.
- At most ``COPY_TRANSFERS`` responses copy at once; beyond them the server's CPU is worth more
  than the clients' and a response goes by sendfile from the start.
- A client that takes every byte as fast as the server copies (``FAST_READER_TURNS`` turns in a
  row) makes the server the slower side: the rest of its response goes by sendfile, which costs
  the server least (four curl processes reading a cached blob to /dev/null: 1.4-1.6 GB/s
  copied, more by sendfile).

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
import enum
import fcntl
import io
import os
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proxy.storage import pagecache

# Chunk size when the event loop cannot sendfile (uvloop) and the bytes go through Python.
FALLBACK_CHUNK = 256 * 1024
# The copy: bytes per read and write, and chunks per turn of the event loop (then the other
# requests get theirs). One buffer for the process: each chunk is read and written with no await
# in between, so no two transfers ever share it. 64 KiB measured best (docs/benchmarks.md).
COPY_CHUNK = 64 * 1024
COPY_CHUNKS_PER_TURN = 16
_COPY_BUFFER = memoryview(bytearray(COPY_CHUNK))
# Responses copying at once; the others go by sendfile from the start. The copy trades the
# server's CPU for the client's: worth it for a few pulls (8 warm skopeo pulls at once: 4.5 s
# against 5.1 s), not when many clients share the machine (the load run's 64 clients on 2 cores:
# 1 940 requests/s with every response copied, 2 015 with 4 at most, 2 095 with none).
COPY_TRANSFERS = 4


class _Copying:
    active = 0  # responses of this process copying now (all on the event loop's thread)


_copying = _Copying()
# A client that takes everything copied for this many turns in a row reads faster than the
# server copies (curl to /dev/null, a fast machine across a network): the rest goes by sendfile.
FAST_READER_TURNS = 8
# What goes by sendfile when the copy has to wait: enough to wait once on the socket.
WAIT_PIECE = COPY_CHUNK


class _Copy(enum.Enum):
    """How ``_copy_some`` ended."""

    TURN = "turn"  # its share of this turn of the event loop is sent: go on after the others
    WAIT = "wait"  # the socket is full, or the bytes are not in the page cache: sendfile a piece
    OFF = "off"  # this file cannot be read without waiting: sendfile the rest
    DONE = "done"


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
        """Send ``count`` bytes of ``file`` from ``offset``, after ``prepare()``: copied while
        the client takes them, by sendfile while it does not (see the module's docstring).

        Raises ConnectionError when the client goes away; the bytes it got are counted.
        """
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        sock = transport.get_extra_info("socket")
        # Bytes written to the socket itself: only where nothing sits between it and the
        # client (not through TLS), and only with reads that never wait for the disk
        # (pagecache.NOWAIT). Otherwise everything goes by loop.sendfile.
        copy = (
            sock is not None
            and transport.get_extra_info("sslcontext") is None
            and pagecache.NOWAIT is not None
            and _copying.active < COPY_TRANSFERS
        )
        end = offset + count
        taken = 0  # turns in a row in which the client took everything copied
        counted = copy
        if counted:
            _copying.active += 1
        try:
            while offset < end:
                if copy and not transport.get_write_buffer_size():
                    sent, state = _copy_some(sock.fileno(), file.fileno(), offset, end)
                    offset += sent
                    self._sent += sent
                    if state is _Copy.DONE:
                        return
                    taken = taken + 1 if state is _Copy.TURN else 0
                    if taken >= FAST_READER_TURNS:
                        # The client reads faster than this loop copies: the server is the
                        # slower side, and sendfile costs it less.
                        copy = False
                    elif state is _Copy.TURN:
                        await asyncio.sleep(0)
                        if transport.is_closing():
                            raise ConnectionResetError("the client went away")
                        continue
                    if state is _Copy.OFF:
                        copy = False
                piece = min(WAIT_PIECE, end - offset) if copy else end - offset
                await self._sendfile(transport, file, offset, piece)
                offset += piece
        except NotImplementedError:
            await self._send_chunks(file, offset, end - offset)
        finally:
            if counted:
                _copying.active -= 1

    async def _sendfile(
        self, transport: asyncio.Transport, file: io.FileIO, offset: int, count: int
    ) -> None:
        try:
            await asyncio.get_running_loop().sendfile(transport, file, offset, count)
        except NotImplementedError:
            raise
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


def _copy_some(socket_fd: int, file_fd: int, offset: int, end: int) -> tuple[int, _Copy]:
    """Copy bytes ``offset`` to ``end`` of the file to the socket, at most
    ``COPY_CHUNKS_PER_TURN`` chunks, without waiting for the disk or the client: (bytes sent,
    why it stopped). Nothing is left in a buffer: what the socket did not take is sent again
    from the file."""
    buffer = _COPY_BUFFER
    start = offset
    for _ in range(COPY_CHUNKS_PER_TURN):
        size = min(COPY_CHUNK, end - offset)
        try:
            got = pagecache.read_now(file_fd, buffer[:size], offset)
        except pagecache.NoWaitUnsupported:
            return offset - start, _Copy.OFF
        if got is None:  # not in the page cache
            return offset - start, _Copy.WAIT
        if got == 0:
            raise EOFError(f"file ended {end - offset} bytes early")
        try:
            sent = os.write(socket_fd, buffer[:got])
        except BlockingIOError:
            return offset - start, _Copy.WAIT
        offset += sent
        if offset == end:
            return offset - start, _Copy.DONE
        if sent < got:
            return offset - start, _Copy.WAIT
    return offset - start, _Copy.TURN


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
