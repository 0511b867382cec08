"""Storage backends that fail or stall on demand: the storage-failure policy's tests, and races
with a write in progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from proxy.storage import ObjectInfo, StorageError
from proxy.storage.base import BlobWriter
from proxy.storage.filesystem import FilesystemStorage
from proxy.storage.localfile import LocalFile


class FaultyStorage(FilesystemStorage):
    """A filesystem backend whose operations named in ``failing`` raise StorageError. With a
    ``commit_gate``, blob writers hold their commit (the fsync and rename that store a verified
    blob) until it is set; ``committing`` is set once one is held."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {}
        self.local_files = True
        self.commit_gate: asyncio.Event | None = None
        self.committing = asyncio.Event()

    def _enter(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if operation in self.failing:
            raise StorageError(f"injected failure of {operation}")

    async def stat(self, key: str) -> ObjectInfo | None:
        self._enter("stat")
        return await super().stat(key)

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        self._enter("get")
        return await super().get(key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self._enter("read")
        async for chunk in super().read(key, start, end):
            yield chunk

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        self._enter("put")
        return await super().put(key, data, content_type=content_type, overwrite=overwrite)

    async def writer(
        self,
        key: str,
        expected_hex: str,
        expected_size: int | None = None,
        *,
        content_type: str | None = None,
    ) -> BlobWriter:
        self._enter("writer")
        inner = await super().writer(key, expected_hex, expected_size, content_type=content_type)
        storage = self

        # Fail the write and commit steps from inside the backend's own writer.
        class Writer(type(inner)):  # type: ignore[misc]
            async def _hash_and_write(self, chunk: bytes) -> None:
                try:
                    storage._enter("write")
                except StorageError:
                    self._hash.update(chunk)  # as the backend's own writes: hashed, then stored
                    raise
                await super()._hash_and_write(chunk)

            async def _commit(self) -> None:
                storage._enter("commit")
                if storage.commit_gate is not None:
                    storage.committing.set()
                    await storage.commit_gate.wait()
                await super()._commit()

        inner.__class__ = Writer
        return inner

    async def delete(self, key: str) -> None:
        self._enter("delete")
        await super().delete(key)

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        self._enter("presigned_url")
        return None

    async def open_local(self, key: str) -> LocalFile | None:
        self._enter("open_local")
        if not self.local_files:
            return None  # as a backend without local files (S3): blobs are streamed with read()
        return await super().open_local(key)


class GatedWrites(FilesystemStorage):
    """A filesystem backend whose puts of keys starting with ``prefix`` (every key by default)
    wait for ``gate``, as a slow S3 PUT would; ``writing`` is set once one has started."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        super().__init__(root)
        self.prefix = prefix
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        if key.startswith(self.prefix):
            self.writing.set()
            await self.gate.wait()
        return await super().put(key, data, content_type=content_type, overwrite=overwrite)
