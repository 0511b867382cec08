"""A cached object opened on local disk, to be sent with ``sendfile``.

Opening the file before a response starts is what makes the response safe from whatever happens
to the cache entry meanwhile: the filesystem backend never writes into a data file in place
(commits link a new file, replacements rename one over the name, evictions unlink the name), so
an open descriptor keeps reading the same inode, complete, until it is closed.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator

READ_CHUNK = 256 * 1024
# Objects up to this size are read whole when opened (in the same worker-thread hop) and the
# file closed at once: for a small blob (an image config, a small layer) one write of headers
# and body costs far less than sendfile, which registers the socket with the event loop and
# makes a system call of its own per response.
READ_WHOLE_UP_TO = 64 * 1024


class LocalFile:
    """An open, read-only cached object: its size, and its bytes until ``close()``.

    ``file`` is an unbuffered binary file object (what ``loop.sendfile`` wants). Its position is
    not meaningful to readers: ``read()`` uses ``pread`` and sendfile takes explicit offsets. A
    small object comes as ``data`` instead (``file`` is None): its bytes, read when opened.
    """

    def __init__(self, file: io.FileIO | None, size: int, data: bytes | None = None) -> None:
        self.file = file
        self.size = size
        self.data = data

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LocalFile:
        """Open ``path`` (blocking: call it from a worker thread). FileNotFoundError if absent."""
        file = io.FileIO(path, "r")
        try:
            return cls.of(file, os.fstat(file.fileno()).st_size)
        except BaseException:
            file.close()
            raise

    @classmethod
    def of(cls, file: io.FileIO, size: int) -> LocalFile:
        """An object already open, of ``size`` bytes (blocking: a small one is read whole and
        its file closed)."""
        if size > READ_WHOLE_UP_TO:
            return cls(file, size)
        try:
            data = file.readall()
        finally:
            file.close()
        return cls(None, len(data), data)

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive; None: to the end), read in a worker thread.

        For callers that need the bytes themselves; responses use sendfile instead.
        """
        position = start
        stop = self.size if end is None else min(end + 1, self.size)
        if self.data is not None:
            if position < stop:
                yield self.data[position:stop]
            return
        assert self.file is not None
        while position < stop:
            chunk = await asyncio.to_thread(
                os.pread, self.file.fileno(), min(READ_CHUNK, stop - position), position
            )
            if not chunk:
                return  # cannot happen to a file nobody writes into; never loop on it
            position += len(chunk)
            yield chunk

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
