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


class LocalFile:
    """An open, read-only cached object: its size, and its bytes until ``close()``.

    ``file`` is an unbuffered binary file object (what ``loop.sendfile`` wants). Its position is
    not meaningful to readers: ``read()`` uses ``pread`` and sendfile takes explicit offsets.
    """

    def __init__(self, file: io.FileIO, size: int) -> None:
        self.file = file
        self.size = size

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LocalFile:
        """Open ``path`` (blocking: call it from a worker thread). FileNotFoundError if absent."""
        file = io.FileIO(path, "r")
        try:
            return cls(file, os.fstat(file.fileno()).st_size)
        except BaseException:
            file.close()
            raise

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive; None: to the end), read in a worker thread.

        For callers that need the bytes themselves; responses use sendfile instead.
        """
        position = start
        stop = self.size if end is None else min(end + 1, self.size)
        while position < stop:
            chunk = await asyncio.to_thread(
                os.pread, self.file.fileno(), min(READ_CHUNK, stop - position), position
            )
            if not chunk:
                return  # cannot happen to a file nobody writes into; never loop on it
            position += len(chunk)
            yield chunk

    def close(self) -> None:
        self.file.close()
