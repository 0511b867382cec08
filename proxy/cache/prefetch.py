"""Prefetch: the moment an image manifest is served, fetch its blobs before the client asks.

Clients are slow to ask: skopeo into a directory fetches blobs one after another, the Docker
daemon three at a time, and only after reading the manifest. The proxy knows, when it serves a
platform manifest, exactly which blobs will be asked for next, so it starts their downloads then,
in the background (``PROXY_PREFETCH``, on by default):

- Only for an image manifest (its config and layers). An index names one manifest per platform
  and a client pulls only its own: nothing is prefetched until a platform manifest is asked for.
- Only for a GET: a HEAD reads nothing (one HEAD must not make the proxy download an image), and
  the Docker daemon's GET by digest follows its HEAD anyway. A manifest is never fetched in order
  to prefetch: that would be a counted pull no client asked for. Blob GETs cost no quota.
- Within the cache's limit: a blob is prefetched only into the room below the limit's low-water
  mark (so a prefetch never makes the cache evict anything), and prefetched blobs no client
  asked for yet (``BlobPins``' speculative ones, and those being prefetched) stay within
  ``MAX_SHARE`` of the limit. Eviction takes those before anything a client used. A blob whose
  size the manifest does not give, or too large to be cached, is not prefetched.
- A prefetch is the very download a client would start (``BlobCache.prefetch``): a client asking
  for that blob follows it from its first byte, and nothing is fetched twice.
- Client requests come first. Prefetches run under their own cap (a quarter of the fetch slots),
  leave piece connections for clients, and a client asking for a blob still queued here starts
  its download at once on its own (the queued prefetch then finds it in flight and does nothing).
  A failed prefetch is only logged; a client whose blob's prefetch failed before its first byte
  tries on its own. While the upstream is in back-off (a 429, failures) nothing is prefetched:
  checked when the manifest is served and again by each queued blob just before it goes upstream.
- Prefetch tasks run outside the request that served the manifest (in a context of their own),
  so their upstream requests and cache results do not end up in that request's log line.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, Protocol

import cachetools
import structlog

from proxy.cache.blobs import BlobCache
from proxy.cache.manifests import ManifestCache
from proxy.cache.upkeep.retention import LOW_WATER
from proxy.registry.manifest import IMAGE_TYPES, BlobDescriptor, Manifest, image_blobs
from proxy.upstream.client import RegistryClient

log = structlog.get_logger(__name__)

# Blobs waiting for a prefetch slot at most; a flood of manifests cannot queue without bound.
MAX_QUEUED = 1000
# Blobs found cached (or brought in) lately are not looked up again for every pull of a popular
# image: each look is a storage request (an S3 HEAD). A blob evicted meanwhile is only not
# prefetched; the client's own request fetches it as usual.
RECENT_BLOBS = 100_000
RECENT_SECONDS = 600.0
#: Prefetched bytes no client asked for yet, at most, as a share of the cache's limit.
MAX_SHARE = 0.1


class CacheRoom(Protocol):
    """The cache's size, limit and speculative bytes (the janitor implements it)."""

    @property
    def estimated_bytes(self) -> int | None: ...

    def limit_now(self) -> int | None: ...

    def speculative_bytes(self) -> int: ...


class PrefetchObserver(Protocol):
    """Hears what prefetching did (the metrics implement it)."""

    def blob_prefetched(self, size: int) -> None: ...

    def prefetch_failed(self) -> None: ...

    def prefetch_skipped_blob(self) -> None: ...


class Prefetcher:
    def __init__(
        self,
        blobs: BlobCache,
        manifests: ManifestCache,
        *,
        enabled: bool = True,
        max_fetches: int = 16,
        observer: PrefetchObserver | None = None,
        room: CacheRoom | None = None,
    ) -> None:
        """``room``: the cache's limit to stay within (None: no limit)."""
        self.enabled = enabled
        self._blobs = blobs
        self._manifests = manifests
        self._observer = observer
        self._room = room
        self._prefetching = 0  # bytes of the prefetches under way
        self._slots = asyncio.Semaphore(max_fetches)
        self._queued: set[str] = set()  # digests with a prefetch waiting or running
        self._recent: cachetools.TTLCache[str, bool] = cachetools.TTLCache(
            RECENT_BLOBS, RECENT_SECONDS
        )
        # Image manifests every blob of which was recent when it was last served: served again
        # within RECENT_SECONDS, nothing is looked at (no JSON parse, no task). Warm pulls ask
        # for the same platform manifests over and over.
        self._recent_manifests: cachetools.TTLCache[str, bool] = cachetools.TTLCache(
            RECENT_BLOBS // 10, RECENT_SECONDS
        )
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._queued)

    def manifest_served(self, client: RegistryClient, name: str, manifest: Manifest) -> None:
        """A client was sent this manifest: prefetch its blobs if it is an image's."""
        if not self.enabled or manifest.media_type not in IMAGE_TYPES:
            return
        if manifest.digest.hex in self._recent_manifests:
            return
        if client.backoff_reason(name) is not None:
            return  # the upstream said no (429, failing): only what clients ask for goes there
        pending = False
        for blob in image_blobs(manifest.data):
            if blob.digest.hex not in self._recent:
                pending = True
                self._queue(client, name, blob)
        if not pending:
            self._recent_manifests[manifest.digest.hex] = True

    async def wait_idle(self) -> None:
        """Wait until every prefetch queued so far has finished (its download included)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        """Stop prefetching: queued prefetches are dropped (downloads running go on)."""
        self.enabled = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _queue(self, client: RegistryClient, name: str, blob: BlobDescriptor) -> None:
        key = blob.digest.hex
        if key in self._queued or key in self._recent or len(self._queued) >= MAX_QUEUED:
            return
        self._queued.add(key)
        self._spawn(self._prefetch(client, name, blob), f"prefetch {blob.digest}")

    async def _prefetch(self, client: RegistryClient, name: str, blob: BlobDescriptor) -> None:
        try:
            async with self._slots:
                if client.backoff_reason(name) is not None:
                    return  # the upstream said no while this waited: leave it to the clients
                admitted = 0

                def admit() -> bool:
                    # Asked once the blob proved to be neither cached nor in flight.
                    nonlocal admitted
                    if not self._fits(blob.size):
                        if self._observer is not None:
                            self._observer.prefetch_skipped_blob()
                        return False  # the client's own request fetches it, as ever
                    admitted = blob.size or 0
                    self._prefetching += admitted
                    return True

                try:
                    fetch = await self._blobs.prefetch(
                        client, name, blob.digest, blob.size, admit=admit
                    )
                finally:
                    self._prefetching -= admitted
        except Exception as exc:
            self._failed(name, blob, str(exc))
            return
        finally:
            self._queued.discard(blob.digest.hex)
        if fetch is None:
            # Cached already, or a download (a client's) is in flight.
            self._recent[blob.digest.hex] = True
            return
        if fetch.error is not None:
            self._failed(name, blob, str(fetch.error))
            return
        self._recent[blob.digest.hex] = True
        if self._observer is not None:
            self._observer.blob_prefetched(fetch.written)

    def _fits(self, size: int | None) -> bool:
        """Whether a blob of ``size`` bytes may be prefetched within the cache's limit now."""
        limit = self._room.limit_now() if self._room is not None else None
        if limit is None:
            return True  # no limit: nothing is ever evicted
        assert self._room is not None
        largest = self._blobs.largest_cached()
        estimated = self._room.estimated_bytes
        if size is None or estimated is None or (largest is not None and size > largest):
            return False
        speculative = self._room.speculative_bytes() + self._prefetching + size
        return (
            speculative <= limit * MAX_SHARE
            and estimated + self._prefetching + size <= limit * LOW_WATER
        )

    def _failed(self, name: str, blob: BlobDescriptor, error: str) -> None:
        # Only logged: the client's own request for the blob fetches it as usual.
        log.info("blob.prefetch_failed", digest=str(blob.digest), repository=name, error=error)
        if self._observer is not None:
            self._observer.prefetch_failed()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        # A context of its own: not the request's (see the module docstring).
        task = asyncio.create_task(work, name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
