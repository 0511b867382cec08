"""Reading a local file on the event loop when its bytes are in the page cache.

A read from the page cache is a copy in memory, a few microseconds for 256 KiB; a read that has
to wait for the disk would stop every request the event loop serves. ``RWF_NOWAIT`` (Linux 4.14
and later) makes a read that would wait fail at once instead, so the common case (a blob just
written by a download, or read a moment ago) needs no worker thread, and the rest still gets one.
A hop to a worker thread and back costs about as much as the read itself; eight clients following
one download made thousands of them.
"""

from __future__ import annotations

import asyncio
import errno
import os

# None where reads cannot be asked not to wait.
NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


class NoWaitUnsupported(Exception):
    """This file's file system cannot tell whether a read would wait (some network and FUSE
    file systems): every read of it goes to a worker thread."""


def read_now(fd: int, into: memoryview | bytearray, offset: int) -> int | None:
    """Bytes read into ``into`` from ``offset`` of the file, as many as the page cache has at
    once (0 at the end of the file); None when reading would wait for the disk."""
    if NOWAIT is None:
        raise NoWaitUnsupported("this Python has no RWF_NOWAIT")
    try:
        return os.preadv(fd, [into], offset, NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            raise NoWaitUnsupported(str(exc)) from exc
        raise


async def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes from ``offset``, fewer only at the end of the file: from the page
    cache on the event loop, what is not there from a worker thread."""
    buffer = bytearray(size)
    got = 0
    with memoryview(buffer) as view:
        try:
            while got < size:
                read = read_now(fd, view[got:], offset + got)
                if read is None:  # would wait for the disk
                    break
                if read == 0:  # the end of the file
                    return bytes(view[:got])
                got += read
        except NoWaitUnsupported:
            pass
        head = bytes(view[:got])
    if got == size:
        return head
    return head + await asyncio.to_thread(os.pread, fd, size - got, offset + got)
