"""The pull-through policy for manifests and tags.

- A manifest by digest is immutable: served from the cache, fetched once (single-flight) on a miss.
- A tag maps to a digest through a ``TagRecord`` kept in storage (shared by every instance) with
  the time it was last confirmed upstream. Within ``tag_ttl`` the record is trusted with no
  upstream request at all. After it, one HEAD (free on Docker Hub) revalidates it; only when the
  digest changed does a GET (a counted pull) fetch the new manifest. A failed HEAD never falls
  back to a GET.
- When the upstream fails and the tag has a record, the last known digest is served ("stale"),
  with a Warning header; with nothing cached the upstream's error is passed on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import cachetools
import structlog

from proxy.cache.keys import manifest_key, tag_key
from proxy.cache.singleflight import SingleFlight
from proxy.logs import mark_cache
from proxy.reference import Digest, Reference
from proxy.storage import Storage, StorageError
from proxy.upstream.client import RegistryClient
from proxy.upstream.errors import UpstreamError, UpstreamNotFound

log = structlog.get_logger(__name__)

# Manifests are small (4 MiB at most) and asked for on every pull: keep the hot ones in memory.
MEMORY_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TagRecord:
    digest: Digest
    media_type: str
    checked_at: float  # wall-clock seconds: shared across instances through storage

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "digest": str(self.digest),
                "media_type": self.media_type,
                "checked_at": self.checked_at,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TagRecord | None:
        try:
            raw = json.loads(data)
            return cls(
                Digest.parse(raw["digest"]), str(raw["media_type"]), float(raw["checked_at"])
            )
        except Exception:
            return None


@dataclass(frozen=True, slots=True)
class Manifest:
    data: bytes
    media_type: str
    digest: Digest
    stale_reason: str | None = None  # set when served from cache because the upstream failed


class ManifestCache:
    def __init__(
        self,
        storage: Storage,
        *,
        tag_ttl: float,
        max_manifest_bytes: int,
        on_storage_error: Callable[[StorageError], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._tag_ttl = tag_ttl
        self._max_bytes = max_manifest_bytes
        self._on_storage_error = on_storage_error
        self.clock = clock
        self._manifests: cachetools.LRUCache[str, tuple[bytes, str]] = cachetools.LRUCache(
            MEMORY_CACHE_BYTES, getsizeof=lambda entry: len(entry[0]) + 200
        )
        self._tags: cachetools.LRUCache[str, TagRecord] = cachetools.LRUCache(100_000)
        self._flights: SingleFlight[Manifest] = SingleFlight()
        self._resolutions: SingleFlight[tuple[TagRecord, str | None]] = SingleFlight()

    @property
    def in_flight(self) -> int:
        return len(self._flights) + len(self._resolutions)

    async def get(self, client: RegistryClient, name: str, reference: Reference) -> Manifest:
        if reference.digest is not None:
            return await self.by_digest(client, name, reference.digest)
        assert reference.tag is not None
        record, stale_reason = await self._resolve_tag(client, name, reference.tag)
        manifest = await self.by_digest(client, name, record.digest, stale_ok=stale_reason)
        if stale_reason is not None:
            mark_cache("stale")
            return Manifest(manifest.data, manifest.media_type, manifest.digest, stale_reason)
        return manifest

    async def head_by_digest(
        self, client: RegistryClient, name: str, digest: Digest
    ) -> tuple[str, int]:
        """Media type and size of a manifest by digest, without spending a pull on a miss."""
        cached = await self._load(digest)
        if cached is not None:
            mark_cache("hit")
            return cached[1], len(cached[0])
        mark_cache("miss")
        head = await client.head_manifest(name, str(digest))
        if head.size is None:
            manifest = await self.by_digest(client, name, digest)
            return manifest.media_type, len(manifest.data)
        return head.media_type, head.size

    async def by_digest(
        self, client: RegistryClient, name: str, digest: Digest, *, stale_ok: str | None = None
    ) -> Manifest:
        cached = await self._load(digest)
        if cached is not None:
            mark_cache("hit")
            return Manifest(cached[0], cached[1], digest)
        mark_cache("miss")

        async def fetch() -> Manifest:
            body = await client.get_manifest(name, str(digest), self._max_bytes)
            await self._store(body.digest, body.data, body.media_type)
            return Manifest(body.data, body.media_type, body.digest)

        manifest, _ = await self._flights.run(("manifest", digest.hex), fetch)
        return manifest

    async def _resolve_tag(
        self, client: RegistryClient, name: str, tag: str
    ) -> tuple[TagRecord, str | None]:
        """The digest the tag names now, and why it is stale (None when confirmed or fresh)."""
        key = tag_key(client.host, name, tag)
        record = self._tags.get(key)
        if record is None or not self._is_fresh(record):
            # Another instance may have confirmed it since we last looked. A revalidation in this
            # process may also have finished while we read: keep whichever record is newest.
            await self._load_tag(key)
            record = self._tags.get(key)
        if record is not None and self._is_fresh(record):
            return record, None

        async def revalidate() -> tuple[TagRecord, str | None]:
            return await self._revalidate(client, name, tag, key, record)

        result, _ = await self._resolutions.run(("tag", key), revalidate)
        return result

    async def _revalidate(
        self, client: RegistryClient, name: str, tag: str, key: str, record: TagRecord | None
    ) -> tuple[TagRecord, str | None]:
        backoff = client.backoff_reason()
        if record is not None and backoff is not None:
            return record, backoff
        try:
            head = await client.head_manifest(name, tag)
        except UpstreamNotFound:
            raise  # the upstream says the tag is gone: that is an answer, not a failure
        except UpstreamError as exc:
            client.note_failure(exc)
            if record is None:
                raise
            log.warning(
                "tag.stale", repository=name, tag=tag, digest=str(record.digest), reason=exc.detail
            )
            return record, exc.detail

        now = self.clock()
        cached = await self._load(head.digest) if head.digest is not None else None
        if cached is not None:
            assert head.digest is not None
            updated = TagRecord(head.digest, cached[1], now)
        elif head.digest is not None and record is not None and head.digest == record.digest:
            # Unchanged, but the bytes are not in the cache right now: by_digest refetches them
            # if a client asks; confirming the tag needs no GET.
            updated = TagRecord(head.digest, record.media_type, now)
        else:
            # New content (or an upstream that does not tell digests on HEAD): one counted GET.
            reference = str(head.digest) if head.digest is not None else tag
            body = await client.get_manifest(name, reference, self._max_bytes)
            await self._store(body.digest, body.data, body.media_type)
            updated = TagRecord(body.digest, body.media_type, now)
        await self._save_tag(key, updated)
        return updated, None

    def _is_fresh(self, record: TagRecord) -> bool:
        return self.clock() - record.checked_at < self._tag_ttl

    # --- storage access, tolerant of a failing backend ------------------------------------------

    async def _load(self, digest: Digest) -> tuple[bytes, str] | None:
        cached = self._manifests.get(digest.hex)
        if cached is not None:
            return cached
        try:
            found = await self._storage.get(manifest_key(digest))
        except StorageError as exc:
            self._on_storage_error(exc)
            return None
        if found is None:
            return None
        data, info = found
        if Digest.of(data) != digest:
            # Never serve bytes that do not match their name; drop the entry and refetch.
            log.error("manifest.corrupt", digest=str(digest))
            await self._storage.delete(manifest_key(digest))
            return None
        entry = (data, info.content_type or "application/octet-stream")
        self._manifests[digest.hex] = entry
        return entry

    async def _store(self, digest: Digest, data: bytes, media_type: str) -> None:
        self._manifests[digest.hex] = (data, media_type)
        try:
            await self._storage.put(manifest_key(digest), data, content_type=media_type)
        except StorageError as exc:
            self._on_storage_error(exc)

    async def _load_tag(self, key: str) -> TagRecord | None:
        try:
            found = await self._storage.get(key)
        except StorageError as exc:
            self._on_storage_error(exc)
            return None
        record = TagRecord.from_json(found[0]) if found else None
        current = self._tags.get(key)
        if record is not None and (current is None or record.checked_at > current.checked_at):
            self._tags[key] = record
        return record

    async def _save_tag(self, key: str, record: TagRecord) -> None:
        self._tags[key] = record
        try:
            await self._storage.put(key, record.to_json(), overwrite=True)
        except StorageError as exc:
            self._on_storage_error(exc)
