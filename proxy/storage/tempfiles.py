"""Temporary files owned by a lock: partial cache writes (``tmp/``) and spool files.

A process killed mid-download leaves its temporary files behind, and something must remove them
without ever removing one still in use. A name cannot tell: a pid in it means nothing to a process
in another pid namespace (two containers of the image on one volume: ``cache du`` in one removed
the server's partial download in the other), and a directory shared with anything else holds
files of no pid at all. So a temporary file belongs to whoever holds its lock:

- ``create_owned`` makes a new file and takes an exclusive ``flock`` on it before anyone can
  take it as abandoned; the lock lives as long as the descriptor, so the writer holds it for the
  file's whole life and a crash, SIGKILL included, lets go of it. (A cleaner that got in between
  the creation and the lock has removed the name: the writer notices and starts over.)
- ``remove_abandoned`` removes only the plain files of a directory whose lock it can take,
  holding that lock while it unlinks. A file whose lock it cannot take, for whatever reason, is
  left alone.

What this relies on: ``flock`` locks belong to the open file, not to a pid, so they hold across
pid namespaces of one kernel and between two descriptors of one process. On NFS (v4, or v3 with
NLM) Linux carries ``flock`` as a whole-file lock the server keeps, so they hold across hosts on
a shared volume; the lock of a host that died is released when its lease runs out (NFSv4: 90 s
by default), and its files are left until then. A filesystem with no working locks (``flock``
fails): files are made unlocked and no cleaner can ever take them, so nothing is removed there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from collections.abc import Collection
from pathlib import Path

#: flock failing with these means the filesystem has no locks, not that the file is in use.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def create_owned(directory: Path) -> tuple[Path, int]:
    """A new empty file in ``directory``, open for reading and writing and locked by this
    process for as long as the returned descriptor is open (close it after unlinking the file,
    or after moving it into place, never before). Raises OSError (a full disk: ENOSPC)."""
    while True:
        path = directory / uuid.uuid4().hex
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if _try_lock(fd) is not False and _still_named(path, fd):
                return path, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # a cleaner took it between its creation and our lock: it is gone


def remove_abandoned(
    directory: Path, *, keep: Collection[str] = (), dry_run: bool = False
) -> list[Path]:
    """Remove the plain files of ``directory`` (not those named in ``keep``) whose lock can be
    taken: nobody holds them. Returns them (with ``dry_run``: what would go, left in place)."""
    removed = []
    with os.scandir(directory) as entries:
        candidates = [e for e in entries if e.name not in keep and e.is_file(follow_symlinks=False)]
    for entry in candidates:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            if _try_lock(fd) is not True or not _still_named(Path(entry.path), fd):
                continue  # in use (or no locks here): never take what may be in use
            if not dry_run:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _try_lock(fd: int) -> bool | None:
    """True: locked now; False: someone else holds it; None: this filesystem has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return None
        raise
    return True


def _still_named(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    with contextlib.suppress(FileNotFoundError):
        named = os.stat(path, follow_symlinks=False)
        mine = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)
    return False
