"""The pull-through policy for blobs: cache first, one shared upstream download per miss.

Blobs are content-addressed and immutable, so a cached digest is served without any upstream
request. A miss starts (or joins) the one ``BlobFetch`` for that digest; every client that wants the
blob meanwhile follows the same download.

A blob cached (or being fetched) for one repository is served under another only when it belongs
there too: one separate step, ``ContentLinks.admit`` (a memory lookup on the warm path).

Housekeeping hooks (``BlobUsage``): every hit and every stored blob is recorded as a use, and a
blob served from the cache is held for as long as its ``BlobContent`` lives, so eviction never
takes it from under a client.

A download may also be started before any client asks (``prefetch``, see ``proxy.cache.prefetch``)
and big blobs are fetched in pieces (``proxy.cache.pieces``); either way it is the same one
download per digest that clients follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import cachetools
import structlog

from proxy.cache.inflight import BlobFetch, UpstreamOpener, pump
from proxy.cache.keys import blob_key
from proxy.cache.links import ContentLinks
from proxy.cache.pieces import (
    PieceBudget,
    PieceObserver,
    PieceSettings,
    blob_ranges,
    open_in_pieces,
)
from proxy.cache.spool import Spool, SpoolSpan
from proxy.cache.upkeep.usage import BlobUsage
from proxy.ops.logs import mark_cache
from proxy.registry.reference import Digest
from proxy.storage import DiscardingWriter
from proxy.storage.failsafe import FailSafeStorage, FailSafeWriter
from proxy.storage.localfile import READ_WHOLE_UP_TO, LocalFile
from proxy.upstream.client import RegistryClient
from proxy.upstream.errors import UpstreamError

log = structlog.get_logger(__name__)


@dataclass(slots=True, weakref_slot=True)
class BlobContent:
    """A blob ready to be sent, its source settled before any byte of the response goes out.

    - ``read(start, end)`` streams any byte range (``end`` inclusive, None: to the end): the
      cached object, or the shared upstream download (``from_cache`` False).
    - ``file``: a blob cached on local disk, opened to be sent with sendfile. It was opened
      before the response started and stays readable for as long as the content lives,
      whatever happens to the cache entry meanwhile (an eviction unlinks the name; this
      descriptor keeps the bytes).
    - ``parts(start, end)``: the shared upstream download's bytes, those already in its spool
      file as spans of the reader's own opening of it (sent from the file, like ``file``), the
      rest (held in memory when the spool's disk is full) as bytes.
      ``settled()`` waits until that download is over: its last bytes go out once they are
      verified, and the storing goes on after them.
    - ``redirect_url``: a presigned URL the client fetches the bytes from itself.
    - ``data``: a small cached blob's bytes (up to ``SMALL_BLOB``), sent in one write.

    Whatever it holds for its reader (an open file, a cached blob kept from eviction, a place in
    a download) is let go by ``release()`` (the route calls it when its response is over), or at
    the latest when the content is garbage.
    """

    digest: Digest
    size: int | None
    read: Callable[[int, int | None], AsyncIterator[bytes]]
    from_cache: bool
    redirect_url: str | None = None
    file: LocalFile | None = None
    data: bytes | None = None
    parts: Callable[[int, int | None], AsyncIterator[bytes | SpoolSpan]] | None = None
    settled: Callable[[], Awaitable[None]] | None = None  # a download's end: stored, or failed
    _releases: list[weakref.finalize[[], object]] = field(default_factory=list, repr=False)

    def hold_until_released(self, release: Callable[[], object]) -> None:
        """Run ``release`` once: on ``release()``, or when the content is garbage."""
        self._releases.append(weakref.finalize(self, release))

    def release(self) -> None:
        """Let go of what the content holds (each release runs once, in reverse order)."""
        for finalizer in reversed(self._releases):
            finalizer()


class BlobObserver(PieceObserver, Protocol):
    """Hears what downloads did (the metrics implement it)."""

    def prefetch_hit(self) -> None: ...

    def blob_too_large(self) -> None: ...


# Prefetched blobs remembered until a client asks for them (to count prefetch hits).
PREFETCHED_MEMORY = 10_000
# A blob larger than this share of the cache's limit is streamed to its clients and not cached:
# keeping it would evict most of the cache, and soon itself.
LARGEST_CACHED_SHARE = 0.25
# Small blobs (image configs above all: one per pull) are kept in memory, like manifests: a hit
# then costs no storage round trip (a worker-thread hop, or an S3 GET) and goes out in one write.
SMALL_BLOB = READ_WHOLE_UP_TO
SMALL_BLOBS_MEMORY = 32 * 1024 * 1024


class BlobCache:
    def __init__(
        self,
        storage: FailSafeStorage,
        spool: Spool,
        *,
        links: ContentLinks,
        redirect_expires: int | None = None,
        max_fetches: int = 64,
        usage: BlobUsage | None = None,
        pieces: PieceSettings | None = None,
        observer: BlobObserver | None = None,
        limit: Callable[[], int | None] = lambda: None,
    ) -> None:
        """``limit``: the cache's size limit now (None: none), for ``largest_cached``."""
        self._storage = storage
        self._spool = spool
        self._links = links
        self._usage = usage or BlobUsage()
        self._redirect_expires = redirect_expires
        self._fetches: dict[str, BlobFetch] = {}
        # (upstream host, repository) each fetch in flight is for: its own clients need no check.
        self._fetched_for: dict[str, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Bounds upstream connections and spool disk in use; excess fetches queue for a slot.
        self._fetch_slots = asyncio.Semaphore(max_fetches)
        self._pieces = pieces or PieceSettings(pieces=1)
        # Extra connections for pieces, beyond the one per fetch slot: a quarter more.
        self._piece_budget = PieceBudget(max(1, max_fetches // 4))
        self._observer = observer
        self._limit = limit
        self._small: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(
            SMALL_BLOBS_MEMORY, getsizeof=len
        )
        # Digests a prefetch brought in that no client has asked for yet.
        self._prefetched: cachetools.LRUCache[str, bool] = cachetools.LRUCache(PREFETCHED_MEMORY)

    @property
    def in_flight(self) -> int:
        return len(self._fetches)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the small blobs kept in memory (at most ``SMALL_BLOBS_MEMORY``)."""
        return int(self._small.currsize)

    def largest_cached(self) -> int | None:
        """Blobs larger than this are streamed and not cached (None: any size is cached)."""
        limit = self._limit()
        return None if limit is None else int(limit * LARGEST_CACHED_SHARE)

    def downloads(self) -> list[dict[str, object]]:
        """The downloads in progress: digest, repository, bytes so far and size (if known)."""
        return [
            {
                "digest": fetch.digest,
                "repository": fetch.repository,
                "bytes": fetch.written,
                "size": fetch.size,
            }
            for fetch in self._fetches.values()
        ]

    async def stat(self, client: RegistryClient, name: str, digest: Digest) -> int | None:
        """The blob's size for a HEAD, without downloading it (the upstream's HEAD is free)."""
        small = self._small.get(digest.hex)
        info = len(small) if small is not None else await self._stat(digest)
        if info is not None:
            await self._admit(client, name, digest)
            mark_cache("hit")
            self._usage.served(digest)
            return info
        fetch = self._fetches.get(digest.hex)
        if fetch is not None:
            await self._admit(client, name, digest)
            mark_cache("miss")
            return await fetch.wait_started()
        mark_cache("miss")
        return await client.head_blob(name, digest)

    async def get(self, client: RegistryClient, name: str, digest: Digest) -> BlobContent:
        """The blob from the cache, or from the (shared) upstream download."""
        fetch = self._joinable(digest)
        if fetch is None:
            release = await self._usage.hold(digest)
            try:
                content = await self._from_cache(digest)
                if content is not None:
                    await self._admit(client, name, digest)
                    mark_cache("hit")
                    self._usage.served(digest)
                    self._client_wants(digest, None)
            except BaseException:
                release()
                raise
            if content is not None:
                content.hold_until_released(release)
                return content
            release()
            fetch = self._joinable(digest) or self._start(client, name, digest)
        # Registered before any await: holds the bytes from 0 from now on, whenever it starts
        # reading (a download that ends meanwhile keeps its spool for this reader).
        reader = fetch.reader()
        try:
            await self._admit(client, name, digest)
            mark_cache("miss")
            self._client_wants(digest, fetch)
            try:
                size = await fetch.wait_started()
            except UpstreamError:
                if not fetch.prefetch:
                    raise
                # A prefetch failed before its first byte: the client's request tries on its own.
                reader.close()
                fetch = self._joinable(digest) or self._start(client, name, digest)
                reader = fetch.reader()
                size = await fetch.wait_started()
        except BaseException:
            reader.close()
            raise
        content = BlobContent(
            digest, size, reader.read, False, parts=reader.parts, settled=fetch.wait_finished
        )
        content.hold_until_released(reader.close)
        return content

    async def prefetch(
        self,
        client: RegistryClient,
        name: str,
        digest: Digest,
        size: int | None,
        *,
        admit: Callable[[], bool] = lambda: True,
    ) -> BlobFetch | None:
        """Download a blob no client asked for yet, and wait until it is done.

        None when there is nothing to do (cached, or a download is in flight) or nothing to gain:
        while the cache storage is failing the blob would not be kept, and the client's own
        request would download it again. ``size`` is what the manifest says, used only to plan
        the pieces. The caller has checked that the blob belongs to ``name`` (it is named by a
        manifest of that repository). ``admit`` decides, once the blob is neither cached nor
        being fetched, whether it may be fetched (the cache's room: ``proxy.cache.prefetch``).
        """
        if self._storage.is_open:
            return None
        if digest.hex in self._fetches or await self._stat(digest) is not None:
            return None
        if digest.hex in self._fetches:  # a client's, started while storage was asked
            return None
        if not admit():
            return None
        fetch = self._start(client, name, digest, size_hint=size, prefetch=True)
        await fetch.wait_finished()
        return fetch

    def _client_wants(self, digest: Digest, fetch: BlobFetch | None) -> None:
        """A client asked for a blob: count a prefetch hit if a prefetch got there first."""
        if fetch is not None:
            hit = fetch.prefetch and not fetch.client_asked
            fetch.client_asked = True
        else:
            hit = self._prefetched.pop(digest.hex, False)
        if hit and self._observer is not None:
            self._observer.prefetch_hit()

    def _joinable(self, digest: Digest) -> BlobFetch | None:
        """The download of this digest a new client can follow from byte 0, if any (with the
        spool disk full a download may have let go of its first bytes)."""
        fetch = self._fetches.get(digest.hex)
        return fetch if fetch is not None and fetch.complete_from_start else None

    async def _admit(self, client: RegistryClient, name: str, digest: Digest) -> None:
        """Raise UpstreamNotFound unless the blob may be served under ``name`` (ContentLinks)."""
        if self._fetched_for.get(digest.hex) == (client.host, name):
            return  # being fetched for this very repository: the upstream answered for it
        await self._links.admit(client.host, name, digest, lambda: client.head_blob(name, digest))

    async def _from_cache(self, digest: Digest) -> BlobContent | None:
        """The cached blob, or None. On local disk it comes as an open file (for sendfile):
        opening it is the lookup, so nothing can remove it between finding it and sending it.
        A small blob comes as its bytes, from memory after the first time."""
        if self._redirect_expires is not None:  # a hit answers with a URL
            size = await self._stat(digest)
            return None if size is None else await self._cached(digest, size)
        data = self._small.get(digest.hex)
        if data is not None:
            return self._small_content(digest, data)
        key = blob_key(digest)
        local = await self._storage.open_local(key)
        if local is not None:
            if local.data is not None:
                return await self._remember_small(digest, local.data)
            content = BlobContent(digest, local.size, local.read, True, file=local)
            content.hold_until_released(local.close)
            return content
        size = await self._stat(digest)
        if size is None:
            return None
        if size <= SMALL_BLOB:
            found = await self._storage.get(key)
            if found is not None:
                return await self._remember_small(digest, found[0])
        return await self._cached(digest, size)

    async def _remember_small(self, digest: Digest, data: bytes) -> BlobContent | None:
        """Keep a small blob's bytes in memory, once they proved to be what their name says
        (hashing 64 KiB is cheap, and a blob in memory is served many times unchecked)."""
        if Digest.of(data) != digest:
            log.error("blob.corrupt", digest=str(digest), note="removed; fetched again")
            await self._storage.delete(blob_key(digest))
            return None
        self._small[digest.hex] = data
        return self._small_content(digest, data)

    @staticmethod
    def _small_content(digest: Digest, data: bytes) -> BlobContent:
        async def read(start: int, end: int | None) -> AsyncIterator[bytes]:
            yield data[start : None if end is None else end + 1]

        return BlobContent(digest, len(data), read, True, data=data)

    async def _cached(self, digest: Digest, size: int) -> BlobContent:
        key = blob_key(digest)
        url = None
        if self._redirect_expires is not None:
            url = await self._storage.presigned_url(key, self._redirect_expires)

        def read(start: int, end: int | None) -> AsyncIterator[bytes]:
            return self._storage.read(key, start, end)

        return BlobContent(digest, size, read, True, url)

    async def _stat(self, digest: Digest) -> int | None:
        info = await self._storage.stat(blob_key(digest))
        return None if info is None else info.size

    def _start(
        self,
        client: RegistryClient,
        name: str,
        digest: Digest,
        *,
        size_hint: int | None = None,
        prefetch: bool = False,
    ) -> BlobFetch:
        # Without room on the spool for another download its bytes go through memory (never a
        # 503: a full disk is not an outage); checked again once the upstream announces the size.
        fetch = BlobFetch(str(digest), self._spool.new_buffer(), repository=name)
        fetch.prefetch = prefetch
        self._fetches[digest.hex] = fetch  # replaces one that can no longer start from byte 0
        self._fetched_for[digest.hex] = (client.host, name)
        opener = self._upstream_opener(client, name, digest, fetch, size_hint)

        @contextlib.asynccontextmanager
        async def open_upstream() -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
            async with opener() as (size, chunks):
                if size is not None and not self._spool.has_room(size):
                    fetch.keep_off_disk(f"no room on the spool for {size} bytes")
                # The upstream answered for this repository: the blob belongs there. Recorded
                # while the bytes flow, so the first byte does not wait for a storage write.
                linking = asyncio.ensure_future(self._links.link(client.host, name, [digest]))
                try:
                    yield size, chunks
                finally:
                    await linking

        async def open_writer(size: int | None) -> FailSafeWriter:
            largest = self.largest_cached()
            if size is not None and largest is not None and size > largest:
                if self._observer is not None:
                    self._observer.blob_too_large()
                log.info("blob.too_large", digest=str(digest), size=size, largest_cached=largest)
                return FailSafeWriter(
                    DiscardingWriter(blob_key(digest), digest.hex, size), self._storage
                )
            return await self._storage.writer(blob_key(digest), digest.hex, size)

        async def run() -> None:
            try:
                async with self._fetch_slots:
                    await pump(fetch, open_upstream, open_writer)
            finally:
                # Later requests read the committed blob from storage (or fetch anew on failure).
                if self._fetches.get(digest.hex) is fetch:
                    del self._fetches[digest.hex]
                    del self._fetched_for[digest.hex]
                if fetch.prefetch and fetch.committed and not fetch.client_asked:
                    self._prefetched[digest.hex] = True
            if fetch.committed:
                speculative = fetch.prefetch and not fetch.client_asked
                self._usage.stored(digest, fetch.written, prefetch=speculative)
            log.info(
                "blob.fetched" if fetch.error is None else "blob.fetch_failed",
                digest=str(digest),
                repository=name,
                bytes=fetch.written,
                cached=fetch.committed,
                prefetch=fetch.prefetch,
                error=str(fetch.error) if fetch.error else None,
            )

        task = asyncio.create_task(run(), name=f"fetch {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

    def _upstream_opener(
        self,
        client: RegistryClient,
        name: str,
        digest: Digest,
        fetch: BlobFetch,
        size_hint: int | None,
    ) -> UpstreamOpener:
        """How the pump opens the upstream: one stream, or pieces for a big blob."""
        if not self._pieces.enabled or not fetch.on_disk:

            @contextlib.asynccontextmanager
            async def open_whole() -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
                async with client.open_blob(name, digest) as stream:
                    yield stream.size, stream.chunks

            return open_whole

        def open_pieces() -> contextlib.AbstractAsyncContextManager[
            tuple[int | None, AsyncIterator[bytes]]
        ]:
            return open_in_pieces(
                blob_ranges(client, name, digest),
                digest=digest,
                settings=self._pieces,
                budget=self._piece_budget,
                store=fetch,
                observer=self._observer or _UNOBSERVED,
                size_hint=size_hint,
                # A prefetch no client waits on yet leaves a client's download its pieces.
                keep=self._pieces.pieces - 1 if fetch.prefetch and not fetch.client_asked else 0,
                # Pieces land ahead of the consumer, in the spool file: only with room for them.
                room=lambda total: fetch.on_disk and self._spool.has_room(total),
            )

        return open_pieces

    async def close(self) -> None:
        """Abort unfinished downloads (their partial cache writes are discarded)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self, grace: float) -> None:
        """Let downloads in progress finish for up to ``grace`` seconds."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)


class _Unobserved:
    def prefetch_hit(self) -> None:
        pass

    def blob_too_large(self) -> None:
        pass

    def piece_fetched(self) -> None:
        pass

    def pieces_fell_back(self) -> None:
        pass


_UNOBSERVED = _Unobserved()
