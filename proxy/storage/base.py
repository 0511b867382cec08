"""The storage interface every cache backend implements, and its domain errors.

Semantics every backend keeps (the conformance suite, tests/unit/storage/test_base.py, checks
them):

- Keys are '/'-separated strings built by ``proxy.cache.keys`` from validated names and digests;
  backends still refuse any key outside ``KEY_RE`` as a second line of defence.
- ``writer()`` streams an object in and hashes it as it goes; ``commit()`` makes it visible only if
  the sha256 and size match, atomically, and never replaces an existing object with other bytes.
  A mismatch, an ``abort()`` or a crash leaves nothing visible under the key.
- ``put()`` stores a small object whole (manifests, tag records); ``overwrite=False`` keeps an
  existing object (content-addressed keys), ``overwrite=True`` replaces it (tag records).
- ``read()`` streams a byte range of an object; ``stat()`` tells its size and content type.
- ``open_local()`` opens an object kept on local disk (a ``LocalFile``, for sendfile); backends
  without local files answer None and are read with ``read()``.
- ``list_objects()`` walks the objects under a prefix with their size and the wall-clock time
  they were last written (for housekeeping: the sweep, eviction, ``registry-proxy cache``);
  ``delete()`` and ``delete_many()`` remove objects and are no-ops for keys that hold nothing.

Exception tree:

    StorageError            the backend failed (I/O error, S3 unreachable, throttled past retries)
      StorageFull           the disk under a local cache is full (ENOSPC, EDQUOT): a capacity
                            problem, not an outage (reads still work; eviction makes room)
    ObjectNotFound          the key holds nothing (raised by read(); stat() returns None instead)
    ObjectCorrupt           the stored object's size is not the one committed (a truncated or
                            grown file): the backend removed it; callers take it as a miss
    DigestMismatch          commit() found bytes that do not match the expected digest or size
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from proxy.storage.localfile import LocalFile

KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


class StorageError(Exception):
    """The storage backend could not do what was asked."""


class StorageFull(StorageError):
    """The disk holding the cache has no room left for what was being written."""


class ObjectNotFound(Exception):
    """No object is stored under the key."""


class ObjectCorrupt(Exception):
    """The object's size changed since its commit (truncated, grown): the backend removed it."""


class DigestMismatch(Exception):
    """Streamed bytes did not hash to the digest they were promised to have."""


def check_key(key: str) -> str:
    if not KEY_RE.fullmatch(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object as ``Storage.list_objects()`` reports it."""

    key: str
    size: int
    modified: float  # wall-clock seconds (POSIX time) of its last write


class BlobWriter(ABC):
    """A streaming write that becomes visible only when ``commit()`` verified the bytes.

    Subclasses implement ``_write``, ``_commit`` and ``_abort``; hashing and the size check live
    here once, so every backend verifies the same way.
    """

    #: Whether a successful commit leaves the object in storage.
    stores = True

    def __init__(self, key: str, expected_hex: str, expected_size: int | None) -> None:
        self.key = key
        self.expected_hex = expected_hex
        self.expected_size = expected_size
        self.size = 0
        self._hash = hashlib.sha256()
        self._closed = False

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.expected_size is not None and self.size > self.expected_size:
            await self.abort()
            raise DigestMismatch(f"{self.key}: more than the expected {self.expected_size} bytes")
        await self._hash_and_write(chunk)

    async def _hash_and_write(self, chunk: bytes) -> None:
        """Hash the chunk, then store it. A backend that stores from a worker thread does both
        there, in one hop (hashlib lets go of the GIL: the event loop serves meanwhile)."""
        self._hash.update(chunk)
        await self._write(chunk)

    def verify(self) -> None:
        """Raise DigestMismatch unless what was written is exactly the expected content."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatch(
                f"{self.key}: got {self.size} bytes, expected {self.expected_size}"
            )
        actual = self._hash.hexdigest()
        if actual != self.expected_hex:
            raise DigestMismatch(f"{self.key}: content hashes to sha256:{actual}")

    async def commit(self) -> None:
        try:
            self.verify()
        except DigestMismatch:
            await self.abort()
            raise
        self._closed = True
        await self._commit()

    async def abort(self) -> None:
        if not self._closed:
            self._closed = True
            await self._abort()

    async def detach(self) -> BlobWriter:
        """Give up storing (the backend failed) but keep verifying: abort, and return a writer
        that carries on hashing from where this one stopped."""
        with contextlib.suppress(StorageError):
            await self.abort()  # already failing; what is left behind is cleaned up later
        verifier = DiscardingWriter(self.key, self.expected_hex, self.expected_size)
        verifier._hash = self._hash.copy()
        verifier.size = self.size
        return verifier

    @abstractmethod
    async def _write(self, chunk: bytes) -> None: ...

    @abstractmethod
    async def _commit(self) -> None: ...

    @abstractmethod
    async def _abort(self) -> None: ...


class DiscardingWriter(BlobWriter):
    """Verifies a stream without storing it: used when the storage backend is unavailable."""

    stores = False

    async def _write(self, chunk: bytes) -> None:
        pass

    async def _commit(self) -> None:
        pass

    async def _abort(self) -> None:
        pass


class Storage(ABC):
    """A cache backend. See the module docstring for the semantics every backend keeps."""

    async def open(self) -> None:
        """Acquire resources and check the backend is usable; raise StorageError if not."""

    async def close(self) -> None:
        """Release resources."""

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo | None:
        """Size and content type of the object, or None when there is none."""

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``start`` to ``end`` (inclusive; None = to the end) of the object."""

    @abstractmethod
    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        """A whole small object and its info, or None when there is none."""

    @abstractmethod
    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        """Store a small object whole. Returns False if it existed and overwrite is False."""

    @abstractmethod
    async def writer(
        self,
        key: str,
        expected_hex: str,
        expected_size: int | None = None,
        *,
        content_type: str | None = None,
    ) -> BlobWriter:
        """Start a verified streaming write of the object with the given sha256."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object if present."""

    async def delete_many(self, keys: list[str]) -> None:
        """Remove every object named (bulk deletes for housekeeping); missing ones are fine."""
        for key in keys:
            await self.delete(key)

    @abstractmethod
    def list_objects(self, prefix: str) -> AsyncIterator[ListedObject]:
        """Every object under ``prefix``, with size and time written (for scans and
        maintenance, not for the request path); in no particular order."""

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        """Every key under ``prefix``."""
        async for entry in self.list_objects(prefix):
            yield entry.key

    async def check(self) -> None:
        """Raise StorageError when the backend cannot serve right now (readiness)."""

    async def verified(self, key: str, size: int) -> None:
        """The object was re-hashed and found intact (by the scrub): a backend that records
        committed sizes records this one if it had none (written by an earlier version)."""

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        """A URL the client can fetch the object from directly, where the backend has one."""
        return None

    async def open_local(self, key: str) -> LocalFile | None:
        """The object opened on local disk, or None: absent, or this backend has no local files.

        The caller closes it. It reads the bytes the object had when opened, whatever happens to
        the key afterwards (see ``proxy.storage.localfile``).
        """
        return None
