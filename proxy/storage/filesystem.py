"""The cache in a local directory: the default for a laptop, and for a single instance.

Layout under the root:

    data/<key>    object bytes; a blob carries the size it was committed with in the extended
                  attribute ``user.registry-proxy.size`` (where the filesystem has none: in
                  its meta file)
    meta/<key>    JSON {"content_type": ..., "size": ...}; written before data/<key> is visible
    tmp/          writes in progress, each locked by its writer for its whole life
                  (``proxy.storage.tempfiles``); linked or renamed into place on commit

Commit is ``os.link`` of the finished temporary file to its final name: atomic, and it fails
instead of replacing when another writer got there first (same digest, so the same bytes).
Nothing ever writes into a file under ``data/`` in place (``overwrite`` renames a new file over
the name), so a descriptor ``open_local()`` returned keeps reading complete, unchanged bytes.
File I/O runs in worker threads so a slow disk never stalls the event loop.

A file can still change under its name (a disk error, a hand edit, a broken copy of the cache):
every lookup of a blob (``open_local``, ``stat``, ``get``) compares its size with the committed
one, in the same worker-thread hop (one ``fgetxattr``), and a mismatch is a miss: the file is
removed and ``ObjectCorrupt`` raised (``FailSafeStorage`` counts it and answers a miss). Bytes
changed in place at the same size are the background scrub's to find
(``proxy.cache.upkeep.scrub``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

import structlog

from proxy.storage.base import (
    BlobWriter,
    ListedObject,
    ObjectCorrupt,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageFull,
    check_key,
)
from proxy.storage.localfile import LocalFile
from proxy.storage.tempfiles import create_owned, remove_abandoned

log = structlog.get_logger(__name__)

READ_CHUNK = 256 * 1024
#: The errors that mean "no room on the disk" (a quota counts the same).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: The extended attribute that holds a blob's committed size (decimal).
SIZE_ATTRIBUTE = "user.registry-proxy.size"
#: setxattr failing with these means the filesystem keeps no user attributes.
_NO_ATTRIBUTES = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})

P = ParamSpec("P")
R = TypeVar("R")


class FilesystemStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.data_dir = self.root / "data"
        self.meta_dir = self.root / "meta"
        self.tmp_dir = self.root / "tmp"
        # Where committed sizes go: extended attributes, or (without them) the meta files.
        self.attributes = True

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._prepare)
        except OSError as exc:
            raise StorageError(f"cannot use cache directory {self.root}: {exc}") from exc

    def _prepare(self) -> None:
        for directory in (self.data_dir, self.meta_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._probe()
        self.attributes = self._attributes_work()
        removed = remove_abandoned(self.tmp_dir)
        if removed:
            log.info("storage.recovered", removed_partial_writes=len(removed), root=str(self.root))

    def _path(self, base: Path, key: str) -> Path:
        path = base / check_key(key)
        # check_key already forbids '..'; this guards against anything it might have missed.
        if not path.resolve().is_relative_to(base.resolve()):
            raise ValueError(f"storage key escapes the cache directory: {key!r}")
        return path

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._io(self._stat, key)

    def _stat(self, key: str) -> ObjectInfo | None:
        path = self._path(self.data_dir, key)
        try:
            info = path.stat()
            committed = self._committed_size(key, path)
        except FileNotFoundError:
            return None
        self._check_size(key, path, info, committed)
        return ObjectInfo(info.st_size, self._content_type(key))

    def _meta(self, key: str) -> dict[str, object]:
        try:
            meta = json.loads(self._path(self.meta_dir, key).read_bytes())
        except FileNotFoundError:
            return {}
        return meta if isinstance(meta, dict) else {}

    def _content_type(self, key: str) -> str | None:
        value = self._meta(key).get("content_type")
        return value if isinstance(value, str) else None

    def _committed_size(self, key: str, file: int | Path) -> int | None:
        """The size the object was committed with (None: not recorded, e.g. not a blob)."""
        if self.attributes:
            try:
                return int(os.getxattr(file, SIZE_ATTRIBUTE))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(exc.errno, exc.strerror, str(file)) from None
                return None  # ENODATA: none recorded (written by an earlier version)
            except ValueError:
                return None
        value = self._meta(key).get("size")
        return value if isinstance(value, int) else None

    def _check_size(
        self, key: str, path: Path, info: os.stat_result, committed: int | None
    ) -> None:
        """Raise ObjectCorrupt, after removing the file, when it is not the size committed."""
        if committed is None or committed == info.st_size:
            return
        with contextlib.suppress(OSError):
            now = path.stat()
            if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):  # still that file
                self._delete(key)
        raise ObjectCorrupt(f"{key}: {info.st_size} bytes, committed with {committed}")

    def _attributes_work(self) -> bool:
        """Whether files here take user extended attributes (a probe in ``tmp/``)."""
        probe, fd = create_owned(self.tmp_dir)
        try:
            os.setxattr(fd, SIZE_ATTRIBUTE, b"0")
        except OSError as exc:
            if exc.errno not in _NO_ATTRIBUTES:
                raise
            return False
        finally:
            probe.unlink(missing_ok=True)
            os.close(fd)
        return True

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(self.data_dir, key)
        try:
            handle = await self._io(path.open, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        try:
            await self._io(handle.seek, start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await self._io(handle.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def open_local(self, key: str) -> LocalFile | None:
        # One worker-thread hop opens the file and learns its size (no separate stat).
        try:
            return await self._io(self._open_local, key)
        except FileNotFoundError:
            return None

    def _open_local(self, key: str) -> LocalFile:
        path = self._path(self.data_dir, key)
        file = io.FileIO(path, "r")
        try:
            info = os.fstat(file.fileno())
            self._check_size(key, path, info, self._committed_size(key, file.fileno()))
            return LocalFile.of(file, info.st_size)
        except BaseException:
            file.close()
            raise

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        return await self._io(self._get, key)

    def _get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        path = self._path(self.data_dir, key)
        try:
            with io.FileIO(path, "r") as file:
                info = os.fstat(file.fileno())
                committed = self._committed_size(key, file.fileno())
                data = file.readall()
        except FileNotFoundError:
            return None
        self._check_size(key, path, info, committed)
        return data, ObjectInfo(len(data), self._content_type(key))

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        return await self._io(self._put, key, data, content_type, overwrite)

    def _put(self, key: str, data: bytes, content_type: str | None, overwrite: bool) -> bool:
        tmp, fd = create_owned(self.tmp_dir)
        try:
            with open(fd, "wb", closefd=False) as handle:
                handle.write(data)
            return self._publish(tmp, key, {"content_type": content_type}, overwrite=overwrite)
        finally:
            tmp.unlink(missing_ok=True)
            os.close(fd)  # the lock goes last: no moment with the file there and not held

    def _publish(
        self, tmp: Path, key: str, meta: dict[str, str | int | None], *, overwrite: bool
    ) -> bool:
        """Make ``tmp`` visible as ``key``; metadata first, so visible data always has it."""
        final = self._path(self.data_dir, key)
        if not overwrite and final.exists():
            return False
        kept = {name: value for name, value in meta.items() if value is not None}
        if kept:
            self._write_meta(key, kept)
        final.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            os.replace(tmp, final)
            return True
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        return True

    async def writer(
        self,
        key: str,
        expected_hex: str,
        expected_size: int | None = None,
        *,
        content_type: str | None = None,
    ) -> BlobWriter:
        check_key(key)
        tmp, handle = await self._io(self._create_partial)
        return _FileWriter(self, key, expected_hex, expected_size, content_type, tmp, handle)

    def _create_partial(self) -> tuple[Path, IO[bytes]]:
        """A new partial write in ``tmp/``, as a file object: closing it lets go of the lock
        (``_FileWriter`` closes it after removing the file)."""
        tmp, fd = create_owned(self.tmp_dir)
        return tmp, open(fd, "wb")

    async def verified(self, key: str, size: int) -> None:
        await self._io(self._record_size, key, size)

    def _record_size(self, key: str, size: int) -> None:
        """Record the committed size of a blob that has none (written by an earlier version)."""
        path = self._path(self.data_dir, key)
        with contextlib.suppress(FileNotFoundError):
            if self._committed_size(key, path) is not None or path.stat().st_size != size:
                return
            if self.attributes:
                os.setxattr(path, SIZE_ATTRIBUTE, str(size).encode())
            else:
                self._write_meta(key, {**self._meta(key), "size": size})

    def _write_meta(self, key: str, meta: Mapping[str, object]) -> None:
        """Replace the object's meta file (atomically: a new file renamed over it)."""
        meta_tmp, fd = create_owned(self.tmp_dir)
        try:
            os.write(fd, json.dumps(meta).encode())
            target = self._path(self.meta_dir, key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(meta_tmp, target)
        finally:
            meta_tmp.unlink(missing_ok=True)
            os.close(fd)

    async def delete(self, key: str) -> None:
        await self._io(self._delete, key)

    def _delete(self, key: str) -> None:
        self._path(self.data_dir, key).unlink(missing_ok=True)
        self._path(self.meta_dir, key).unlink(missing_ok=True)

    async def delete_many(self, keys: list[str]) -> None:
        await self._io(self._delete_many, keys)

    def _delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self._delete(key)

    async def list_objects(self, prefix: str) -> AsyncIterator[ListedObject]:
        for entry in await self._io(lambda: list(self._walk(prefix))):
            yield entry

    def _walk(self, prefix: str) -> Iterator[ListedObject]:
        # Walk only the directory the prefix points into, not the whole cache.
        directory = prefix.rpartition("/")[0]
        top = self._path(self.data_dir, directory) if directory else self.data_dir
        for parent, _, files in os.walk(top, onerror=_unless_missing):
            for name in files:
                path = os.path.join(parent, name)
                key = os.path.relpath(path, self.data_dir)
                if not key.startswith(prefix):
                    continue
                try:
                    info = os.stat(path)
                except FileNotFoundError:
                    continue  # deleted while we walked
                yield ListedObject(key, info.st_size, info.st_mtime)

    async def check(self) -> None:
        """Raise StorageError unless objects can be read and written here right now.

        A removed (or unmounted) cache directory raises FileNotFoundError, which ``_io`` lets
        through for the callers that mean "no such object"; here it means "unusable".
        """
        try:
            await self._io(self._probe)
        except FileNotFoundError as exc:
            raise StorageError(f"filesystem storage: {exc}") from exc

    def _probe(self) -> None:
        self.data_dir.stat()
        probe, fd = create_owned(self.tmp_dir)
        probe.unlink()
        os.close(fd)

    async def _io(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking file I/O in a thread; OS errors become StorageError."""
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except (FileNotFoundError, ValueError):
            raise
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise StorageFull(f"filesystem storage: {exc}") from exc
            raise StorageError(f"filesystem storage: {exc}") from exc


def _unless_missing(error: OSError) -> None:
    """os.walk's error handler: a directory that does not exist (yet, or any more) holds no
    keys; any other error must not pass for an empty cache."""
    if not isinstance(error, FileNotFoundError):
        raise error


class _FileWriter(BlobWriter):
    def __init__(
        self,
        storage: FilesystemStorage,
        key: str,
        expected_hex: str,
        expected_size: int | None,
        content_type: str | None,
        tmp: Path,
        handle: IO[bytes],
    ) -> None:
        super().__init__(key, expected_hex, expected_size)
        self.storage = storage
        self.content_type = content_type
        self.tmp = tmp
        self.handle = handle

    async def _write(self, chunk: bytes) -> None:
        await self.storage._io(self.handle.write, chunk)

    async def _hash_and_write(self, chunk: bytes) -> None:
        await self.storage._io(self._hash_then_write, chunk)

    def _hash_then_write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.handle.write(chunk)

    async def _commit(self) -> None:
        try:
            await self.storage._io(self._finish)
        except FileNotFoundError as exc:
            # Its partial file was removed from under it (by hand, or by a cleaner that could
            # not see its lock): a storage failure like any other, the blob is not cached.
            raise StorageError(f"filesystem storage: partial write vanished: {exc}") from exc

    def _finish(self) -> None:
        try:
            self.handle.flush()
            meta: dict[str, str | int | None] = {"content_type": self.content_type}
            if self.storage.attributes:
                # On the inode before it gets its name: it is never visible without it.
                os.setxattr(self.handle.fileno(), SIZE_ATTRIBUTE, str(self.size).encode())
            else:
                meta["size"] = self.size
            os.fsync(self.handle.fileno())
            self.storage._publish(self.tmp, self.key, meta, overwrite=False)
        finally:
            self.tmp.unlink(missing_ok=True)
            self.handle.close()

    async def _abort(self) -> None:
        def discard() -> None:
            self.tmp.unlink(missing_ok=True)
            # Closing flushes what is still buffered, which fails on a full disk (the very reason
            # for many aborts); the file is closed all the same, and its bytes are not wanted.
            with contextlib.suppress(OSError):
                self.handle.close()

        await asyncio.to_thread(discard)
