"""The cache in a local directory: the default for a laptop, and for a single instance.

Layout under the root:

    data/<key>    object bytes
    meta/<key>    JSON {"content_type": ...}; written before data/<key> becomes visible
    tmp/          writes in progress, named <pid>-<random>; renamed into place on commit

Commit is ``os.link`` of the finished temporary file to its final name: atomic, and it fails
instead of replacing when another writer got there first (same digest, so the same bytes).
Nothing ever writes into a file under ``data/`` in place (``overwrite`` renames a new file over
the name), so a descriptor ``open_local()`` returned keeps reading complete, unchanged bytes.
File I/O runs in worker threads so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

import structlog

from proxy.storage.base import (
    BlobWriter,
    ListedObject,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageFull,
    check_key,
)
from proxy.storage.localfile import LocalFile
from proxy.storage.tempfiles import remove_orphans, temp_name

log = structlog.get_logger(__name__)

READ_CHUNK = 256 * 1024
#: The errors that mean "no room on the disk" (a quota counts the same).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

P = ParamSpec("P")
R = TypeVar("R")


class FilesystemStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.data_dir = self.root / "data"
        self.meta_dir = self.root / "meta"
        self.tmp_dir = self.root / "tmp"

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._prepare)
        except OSError as exc:
            raise StorageError(f"cannot use cache directory {self.root}: {exc}") from exc

    def _prepare(self) -> None:
        for directory in (self.data_dir, self.meta_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        probe = self.tmp_dir / f"{os.getpid()}-probe"
        probe.write_bytes(b"")
        probe.unlink()
        removed = remove_orphans(self.tmp_dir)
        if removed:
            log.info("storage.recovered", removed_partial_writes=removed, root=str(self.root))

    def _path(self, base: Path, key: str) -> Path:
        path = base / check_key(key)
        # check_key already forbids '..'; this guards against anything it might have missed.
        if not path.resolve().is_relative_to(base.resolve()):
            raise ValueError(f"storage key escapes the cache directory: {key!r}")
        return path

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._io(self._stat, key)

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            size = self._path(self.data_dir, key).stat().st_size
        except FileNotFoundError:
            return None
        return ObjectInfo(size, self._content_type(key))

    def _content_type(self, key: str) -> str | None:
        try:
            meta = json.loads(self._path(self.meta_dir, key).read_bytes())
        except FileNotFoundError:
            return None
        value = meta.get("content_type")
        return value if isinstance(value, str) else None

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
        return LocalFile.open(self._path(self.data_dir, key))

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        return await self._io(self._get, key)

    def _get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        try:
            data = self._path(self.data_dir, key).read_bytes()
        except FileNotFoundError:
            return None
        return data, ObjectInfo(len(data), self._content_type(key))

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        return await self._io(self._put, key, data, content_type, overwrite)

    def _put(self, key: str, data: bytes, content_type: str | None, overwrite: bool) -> bool:
        tmp = self._tmp_path()
        try:
            with tmp.open("wb") as handle:
                handle.write(data)
            return self._publish(tmp, key, content_type, overwrite=overwrite)
        finally:
            tmp.unlink(missing_ok=True)

    def _tmp_path(self) -> Path:
        return self.tmp_dir / temp_name()

    def _publish(self, tmp: Path, key: str, content_type: str | None, *, overwrite: bool) -> bool:
        """Make ``tmp`` visible as ``key``; metadata first, so visible data always has it."""
        final = self._path(self.data_dir, key)
        if not overwrite and final.exists():
            return False
        if content_type is not None:
            meta_tmp = self._tmp_path()
            meta_tmp.write_text(json.dumps({"content_type": content_type}))
            meta = self._path(self.meta_dir, key)
            meta.parent.mkdir(parents=True, exist_ok=True)
            os.replace(meta_tmp, meta)
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
        tmp = self._tmp_path()
        handle = await self._io(tmp.open, "wb")
        return _FileWriter(self, key, expected_hex, expected_size, content_type, tmp, handle)

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
        probe = self._tmp_path()
        probe.write_bytes(b"")
        probe.unlink()

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

    async def _commit(self) -> None:
        await self.storage._io(self._finish)

    def _finish(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.storage._publish(self.tmp, self.key, self.content_type, overwrite=False)
        finally:
            self.handle.close()
            self.tmp.unlink(missing_ok=True)

    async def _abort(self) -> None:
        def discard() -> None:
            # Closing flushes what is still buffered, which fails on a full disk (the very reason
            # for many aborts); the file is closed all the same, and its bytes are not wanted.
            with contextlib.suppress(OSError):
                self.handle.close()
            self.tmp.unlink(missing_ok=True)

        await asyncio.to_thread(discard)
