"""The pull-through policy for blobs: cache first, one shared upstream download per miss.

Blobs are content-addressed and immutable, so a cached digest is served without any upstream
request. A miss starts (or joins) the one ``BlobFetch`` for that digest; every client that wants the
blob meanwhile follows the same download.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxy.cache.inflight import BlobFetch, pump
from proxy.cache.keys import blob_key
from proxy.logs import mark_cache
from proxy.reference import Digest
from proxy.storage import BlobWriter, DiscardingWriter, Storage, StorageError
from proxy.storage.filesystem import remove_orphans
from proxy.upstream.client import RegistryClient

log = structlog.get_logger(__name__)

StorageErrorListener = Callable[[StorageError], None]


@dataclass(slots=True)
class BlobContent:
    """A blob ready to be sent: its size and a way to stream any byte range of it."""

    digest: Digest
    size: int | None
    read: Callable[[int, int | None], AsyncIterator[bytes]]
    from_cache: bool
    redirect_url: str | None = None


class BlobCache:
    def __init__(
        self,
        storage: Storage,
        spool_dir: Path,
        *,
        on_storage_error: StorageErrorListener,
        redirect_expires: int | None = None,
        max_fetches: int = 64,
        admit: Callable[[int | None], None] | None = None,
    ) -> None:
        self._storage = storage
        self._spool_dir = spool_dir
        self._on_storage_error = on_storage_error
        self._redirect_expires = redirect_expires
        self._fetches: dict[str, BlobFetch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Bounds upstream connections and spool disk in use; excess fetches queue for a slot.
        self._fetch_slots = asyncio.Semaphore(max_fetches)
        # Raises (503) when the spool has no room for a new download (proxy/spool.py): called
        # with None before a fetch starts and with the size once the upstream announces it.
        self._admit = admit

    def open(self) -> None:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        remove_orphans(self._spool_dir)

    @property
    def in_flight(self) -> int:
        return len(self._fetches)

    async def stat(self, client: RegistryClient, name: str, digest: Digest) -> int | None:
        """The blob's size for a HEAD, without downloading it (the upstream's HEAD is free)."""
        info = await self._stat(digest)
        if info is not None:
            mark_cache("hit")
            return info
        fetch = self._fetches.get(digest.hex)
        if fetch is not None:
            mark_cache("miss")
            return await fetch.wait_started()
        mark_cache("miss")
        return await client.head_blob(name, digest)

    async def get(self, client: RegistryClient, name: str, digest: Digest) -> BlobContent:
        """The blob from the cache, or from the (shared) upstream download."""
        fetch = self._fetches.get(digest.hex)
        if fetch is None:
            size = await self._stat(digest)
            if size is not None:
                mark_cache("hit")
                return await self._cached(digest, size)
            fetch = self._fetches.get(digest.hex) or self._start(client, name, digest)
        mark_cache("miss")
        size = await fetch.wait_started()
        return BlobContent(digest, size, fetch.read, False)

    async def _cached(self, digest: Digest, size: int) -> BlobContent:
        key = blob_key(digest)
        url = None
        if self._redirect_expires is not None:
            url = await self._storage.presigned_url(key, self._redirect_expires)

        def read(start: int, end: int | None) -> AsyncIterator[bytes]:
            return self._storage.read(key, start, end)

        return BlobContent(digest, size, read, True, url)

    async def _stat(self, digest: Digest) -> int | None:
        try:
            info = await self._storage.stat(blob_key(digest))
        except StorageError as exc:
            self._on_storage_error(exc)
            return None
        return None if info is None else info.size

    def _start(self, client: RegistryClient, name: str, digest: Digest) -> BlobFetch:
        if self._admit is not None:
            self._admit(None)
        spool = self._spool_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        fetch = BlobFetch(str(digest), spool)
        self._fetches[digest.hex] = fetch

        @contextlib.asynccontextmanager
        async def open_upstream() -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
            async with client.open_blob(name, digest) as stream:
                if self._admit is not None and stream.size is not None:
                    self._admit(stream.size)
                yield stream.size, stream.chunks

        async def open_writer(size: int | None) -> BlobWriter:
            try:
                return await self._storage.writer(blob_key(digest), digest.hex, size)
            except StorageError as exc:
                self._on_storage_error(exc)
                return DiscardingWriter(blob_key(digest), digest.hex, size)

        async def run() -> None:
            try:
                async with self._fetch_slots:
                    await pump(fetch, open_upstream, open_writer, self._on_storage_error)
            finally:
                # Later requests read the committed blob from storage (or fetch anew on failure).
                if self._fetches.get(digest.hex) is fetch:
                    del self._fetches[digest.hex]
            log.info(
                "blob.fetched" if fetch.error is None else "blob.fetch_failed",
                digest=str(digest),
                repository=name,
                bytes=fetch.written,
                cached=fetch.committed,
                error=str(fetch.error) if fetch.error else None,
            )

        task = asyncio.create_task(run(), name=f"fetch {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

    async def close(self) -> None:
        """Abort unfinished downloads (their partial cache writes are discarded)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self, grace: float) -> None:
        """Let downloads in progress finish for up to ``grace`` seconds."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
