"""Prefetch: the moment an image manifest is served, fetch its blobs before the client asks.

Clients are slow to ask: skopeo into a directory fetches blobs one after another, the Docker
daemon three at a time, and only after reading the manifest. The proxy knows, when it serves a
platform manifest, exactly which blobs will be asked for next, so it starts their downloads then,
in the background (``PROXY_PREFETCH``, on by default):

- Only for an image manifest (its config and layers). An index names one manifest per platform
  and a client pulls only its own: nothing is prefetched until a platform manifest is asked for.
- A HEAD by digest (the Docker daemon sends one before its GET) starts it too when the manifest's
  bytes are cached. A manifest is never fetched in order to prefetch: that would be a counted pull
  no client asked for. Blob GETs cost no quota.
- A prefetch is the very download a client would start (``BlobCache.prefetch``): a client asking
  for that blob follows it from its first byte, and nothing is fetched twice.
- Client requests come first. Prefetches run under their own cap (a quarter of the fetch slots),
  leave piece connections for clients, and a client asking for a blob still queued here starts
  its download at once on its own (the queued prefetch then finds it in flight and does nothing).
  A failed prefetch is only logged; a client whose blob's prefetch failed before its first byte
  tries on its own. While the upstream is in back-off (a 429, failures) nothing is prefetched.
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
from proxy.registry.manifest import IMAGE_TYPES, BlobDescriptor, Manifest, image_blobs
from proxy.registry.reference import Digest
from proxy.upstream.client import RegistryClient

log = structlog.get_logger(__name__)

# Blobs waiting for a prefetch slot at most; a flood of manifests cannot queue without bound.
MAX_QUEUED = 1000
# Blobs found cached (or brought in) lately are not looked up again for every pull of a popular
# image: each look is a storage request (an S3 HEAD). A blob evicted meanwhile is only not
# prefetched; the client's own request fetches it as usual.
RECENT_BLOBS = 100_000
RECENT_SECONDS = 600.0


class PrefetchObserver(Protocol):
    """Hears what prefetching did (the metrics implement it)."""

    def blob_prefetched(self, size: int) -> None: ...

    def prefetch_failed(self) -> None: ...


class Prefetcher:
    def __init__(
        self,
        blobs: BlobCache,
        manifests: ManifestCache,
        *,
        enabled: bool = True,
        max_fetches: int = 16,
        observer: PrefetchObserver | None = None,
    ) -> None:
        self.enabled = enabled
        self._blobs = blobs
        self._manifests = manifests
        self._observer = observer
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

    def manifest_head(self, client: RegistryClient, name: str, digest: Digest) -> None:
        """A client asked about a manifest by digest: prefetch if its bytes are cached."""
        if self.enabled and digest.hex not in self._recent_manifests:
            self._spawn(self._after_head(client, name, digest), f"prefetch after HEAD {digest}")

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

    async def _after_head(self, client: RegistryClient, name: str, digest: Digest) -> None:
        manifest = await self._manifests.cached(digest)
        if manifest is not None:
            self.manifest_served(client, name, manifest)

    def _queue(self, client: RegistryClient, name: str, blob: BlobDescriptor) -> None:
        key = blob.digest.hex
        if key in self._queued or key in self._recent or len(self._queued) >= MAX_QUEUED:
            return
        self._queued.add(key)
        self._spawn(self._prefetch(client, name, blob), f"prefetch {blob.digest}")

    async def _prefetch(self, client: RegistryClient, name: str, blob: BlobDescriptor) -> None:
        try:
            async with self._slots:
                fetch = await self._blobs.prefetch(client, name, blob.digest, blob.size)
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
