"""Response bodies sent from a local file with sendfile(2).

The kernel copies the bytes from the page cache to the socket: no copy through Python, no worker
thread per chunk, and no buffer in the process for a client that reads slowly or not at all (it
waits on its own socket's send buffer, which is the kernel's).
"""

from __future__ import annotations

import asyncio
import io
import os

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
