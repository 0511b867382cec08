"""The pull-through policy for manifests and tags.

- A manifest by digest is immutable: served from the cache, fetched once (single-flight) on a miss.
- A tag maps to a digest through a ``TagRecord`` kept in storage (shared by every instance) with
  the time it was last confirmed upstream. Within ``tag_ttl`` the record is trusted with no
  upstream request at all. After it, one HEAD (free on Docker Hub) revalidates it; only when the
  digest changed does a GET (a counted pull) fetch the new manifest. A failed HEAD never falls
  back to a GET.
- Stale on any failure to get new content: when the HEAD *or the GET of the new manifest* fails
  (429, 5xx, timeout, dropped connection, bytes that do not match their digest, ...) and the tag
  has a record whose manifest is cached, that manifest is served with its stale reason (the
  route turns it into a ``Warning`` header), and the record keeps its old confirmation time, so
  the next request after the upstream recovers moves the tag on. While the upstream client is in
  back-off (``RegistryClient.backoff_reason``) a tag with a cached manifest is served stale
  without asking at all. With nothing cached the upstream's error is passed on.
- A 404 is an answer, not a failure, and is remembered for the negative TTL (``NegativeCache``):
  a tag or manifest the upstream does not have is answered 404 without asking again meanwhile,
  single-flight like any revalidation. A tag the proxy knew that the upstream no longer has
  answers 404 too, or, with ``keep_deleted_tags``, its last known manifest with a warning.
- Each tag's TTL comes from ``TagTtl`` (``PROXY_TAG_TTL_RULES``: first matching pattern).
- Content belongs to repositories (``ContentLinks``): a cached manifest is served by digest under
  a repository only once the upstream said it belongs there: fetched for it, named by one of its
  tag records, or confirmed by a HEAD. What a manifest lists is never such proof.
- Every tag and manifest served is reported to ``on_use`` (the last-use records that expiry and
  eviction go by).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import cachetools
import structlog

from proxy.cache.keys import manifest_key, tag_key
from proxy.cache.links import ContentLinks
from proxy.cache.negative import NegativeCache
from proxy.cache.records import load_newer
from proxy.concurrency.singleflight import SingleFlight
from proxy.ops.logs import mark_cache
from proxy.registry.manifest import Manifest, media_type_of
from proxy.registry.policy import TagTtl
from proxy.registry.reference import Digest, Reference
from proxy.storage.failsafe import FailSafeStorage
from proxy.upstream.client import ManifestHead, RegistryClient
from proxy.upstream.errors import UpstreamError, UpstreamInvalid, UpstreamNotFound

log = structlog.get_logger(__name__)

# Manifests are small (4 MiB at most) and asked for on every pull: keep the hot ones in memory.
MEMORY_CACHE_BYTES = 64 * 1024 * 1024
MEMORY_ENTRY_OVERHEAD = 200
# The stale reason of a tag deleted upstream and kept (PROXY_KEEP_DELETED_TAGS=true).
DELETED_REASON = "upstream no longer has this tag"


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
class TagAnswer:
    """What a revalidation found, shared by every request that waited on it."""

    manifest: Manifest
    fetched: bool  # the manifest came from the upstream (a counted pull), not from the cache
    deleted: bool = False  # the upstream no longer has the tag; this is its last known manifest


class TagDeleted(UpstreamNotFound):
    """A tag the proxy knew is gone upstream (a 404 on revalidation, or remembered since)."""


class ManifestCache:
    def __init__(
        self,
        storage: FailSafeStorage,
        *,
        tag_ttl: TagTtl,
        max_manifest_bytes: int,
        links: ContentLinks,
        negative_ttl: float = 0.0,
        keep_deleted_tags: bool = False,
        on_deleted_tag: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
        on_use: Callable[[str], None] | None = None,
    ) -> None:
        self._storage = storage
        self._on_use = on_use or (lambda key: None)
        self._tag_ttl = tag_ttl
        self._max_bytes = max_manifest_bytes
        self._links = links
        # Upstream 404s for tags and manifests, on the same (settable) clock as the tag TTLs.
        self._negative = NegativeCache(negative_ttl, clock=lambda: self.clock())
        self._keep_deleted = keep_deleted_tags
        # Hears (upstream host, "kept" or "not_found") for every answer about a deleted tag.
        self._on_deleted_tag = on_deleted_tag
        self.clock = clock
        self._manifests: cachetools.LRUCache[str, Manifest] = cachetools.LRUCache(
            MEMORY_CACHE_BYTES, getsizeof=lambda m: len(m.data) + MEMORY_ENTRY_OVERHEAD
        )
        self._tags: cachetools.LRUCache[str, TagRecord] = cachetools.LRUCache(100_000)
        self._flights: SingleFlight[Manifest] = SingleFlight()
        self._resolutions: SingleFlight[TagAnswer] = SingleFlight()

    @property
    def in_flight(self) -> int:
        return len(self._flights) + len(self._resolutions)

    @property
    def memory_bytes(self) -> int:
        """Bytes the manifests kept in memory count for (at most ``MEMORY_CACHE_BYTES``)."""
        return int(self._manifests.currsize)

    async def get(self, client: RegistryClient, name: str, reference: Reference) -> Manifest:
        """The manifest a tag or digest names (by tag: possibly stale, see ``stale_reason``)."""
        if reference.digest is not None:
            return await self.by_digest(client, name, reference.digest)
        assert reference.tag is not None
        return await self._by_tag(client, name, reference.tag)

    async def head_by_digest(
        self, client: RegistryClient, name: str, digest: Digest
    ) -> ManifestHead:
        """Media type and size of a manifest by digest, without spending a pull on a miss."""
        warm = self._warm_digest(client, name, digest)
        if warm is not None:
            mark_cache("hit")
            return ManifestHead(digest, warm.media_type, len(warm.data))
        cached = await self._load(digest)
        if cached is not None:
            await self._admit(client, name, cached)
            mark_cache("hit")
            return ManifestHead(digest, cached.media_type, len(cached.data))
        self._raise_if_remembered(client, name, digest)
        mark_cache("miss")
        try:
            head = await client.head_manifest(name, str(digest))
        except UpstreamNotFound:
            self._negative.remember(_missing_key(client, name, digest))
            raise
        if head.size is None:
            manifest = await self.by_digest(client, name, digest)
            return ManifestHead(digest, manifest.media_type, len(manifest.data))
        return ManifestHead(digest, head.media_type, head.size)

    async def cached(self, digest: Digest) -> Manifest | None:
        """The manifest if it is in the cache; never asks the upstream (costs no pull)."""
        return await self._load(digest)

    async def by_digest(self, client: RegistryClient, name: str, digest: Digest) -> Manifest:
        """The manifest, served under ``name`` only when it belongs to that repository."""
        warm = self._warm_digest(client, name, digest)
        if warm is not None:
            mark_cache("hit")
            return warm
        cached = await self._load(digest)
        if cached is not None:
            await self._admit(client, name, cached)
            mark_cache("hit")
            return cached
        self._raise_if_remembered(client, name, digest)
        mark_cache("miss")
        return await self._fetch_digest(client, name, digest)

    async def _fetch_digest(self, client: RegistryClient, name: str, digest: Digest) -> Manifest:
        """One GET for all concurrent callers of this repository and digest; a 404 remembered.

        The flight is per repository: a request for another repository must not get the bytes
        fetched for this one without its own answer from the upstream.
        """

        async def fetch() -> Manifest:
            # A flight that ended while this caller looked in storage may have stored it.
            cached = await self._load(digest)
            if cached is not None:
                await self._admit(client, name, cached)
                return cached
            try:
                return await self._fetch(client, name, str(digest))
            except UpstreamNotFound:
                self._negative.remember(_missing_key(client, name, digest))
                raise

        return await self._flights.run(("manifest", client.host, name, digest.hex), fetch)

    async def _fetch(self, client: RegistryClient, name: str, reference: str) -> Manifest:
        """One counted GET; the manifest is verified (by digest), linked to ``name`` (the upstream
        answered for it) and stored. Linked first: a request that finds it in memory a moment
        later must find the link too, not ask the upstream to confirm it."""
        manifest = await client.get_manifest(name, reference, self._max_bytes)
        await self._links.link(client.host, name, [manifest.digest])
        await self._store(manifest)
        return manifest

    async def _admit(self, client: RegistryClient, name: str, manifest: Manifest) -> None:
        """Return when a cached manifest may be served under ``name`` (see ContentLinks)."""

        async def confirm() -> None:
            head = await client.head_manifest(name, str(manifest.digest))
            if head.digest is not None and head.digest != manifest.digest:
                raise UpstreamInvalid(f"HEAD {name}@{manifest.digest} named {head.digest}")

        await self._links.admit(client.host, name, manifest.digest, confirm)

    async def _belongs(self, client: RegistryClient, name: str, manifest: Manifest) -> None:
        """The upstream said ``name``'s tag names this manifest (now, or in the record): link it
        to ``name`` (a dictionary lookup once known). Its references are not linked."""
        await self._links.link(client.host, name, [manifest.digest])

    def _raise_if_remembered(self, client: RegistryClient, name: str, digest: Digest) -> None:
        if _missing_key(client, name, digest) in self._negative:
            mark_cache("negative")
            raise UpstreamNotFound(
                f"{name}@{digest} is not known upstream (answer remembered)", status=404
            )

    # --- tags -----------------------------------------------------------------------------------

    async def _by_tag(self, client: RegistryClient, name: str, tag: str) -> Manifest:
        key = tag_key(client.host, name, tag)
        self._on_use(key)
        ttl = self._tag_ttl.seconds(client.host, name, tag)
        # A warm pull, answered from memory without a coroutine (this is _tag_answer's first
        # step and _recorded's when the manifest is in memory and linked to ``name``).
        record = self._tags.get(key)
        if record is not None and self._is_fresh(record, ttl):
            manifest = self._in_memory(record.digest)
            if manifest is not None and self._links.known(client.host, name, manifest.digest):
                mark_cache("hit")
                return manifest
        try:
            answer = await self._tag_answer(client, name, tag, key, ttl)
        except TagDeleted:
            self._count_deleted(client, "not_found")
            raise
        if answer.deleted:
            self._count_deleted(client, "kept")
        if answer.manifest.stale_reason:
            mark_cache("stale")
        else:
            mark_cache("miss" if answer.fetched else "hit")
        return answer.manifest

    async def _tag_answer(
        self, client: RegistryClient, name: str, tag: str, key: str, ttl: float
    ) -> TagAnswer:
        answer = await self._known_answer(client, name, tag, key, ttl, count_negative=True)
        if answer is not None:
            return answer
        # Another instance may have confirmed it since we last looked. A revalidation in this
        # process may also have finished while we read: keep whichever record is newest.
        await self._load_tag(key)
        record = self._tags.get(key)
        if record is not None and self._is_fresh(record, ttl):
            return await self._recorded(client, name, record)
        return await self._resolutions.run(
            ("tag", key), lambda: self._revalidate(client, name, tag, key, ttl)
        )

    async def _known_answer(
        self,
        client: RegistryClient,
        name: str,
        tag: str,
        key: str,
        ttl: float,
        *,
        count_negative: bool = False,
    ) -> TagAnswer | None:
        """The answer no upstream request is needed for: what a fresh record names, or the 404
        the tag is remembered to get (None: ask). Checked before the tag's single flight and
        again inside it, where a revalidation that just ended may have answered."""
        record = self._tags.get(key)
        if record is not None and self._is_fresh(record, ttl):
            return await self._recorded(client, name, record)
        if key in self._negative:
            if count_negative:
                mark_cache("negative")
            return await self._gone(client, name, tag, record)
        return None

    async def _recorded(self, client: RegistryClient, name: str, record: TagRecord) -> TagAnswer:
        """The manifest a fresh tag record names. The record proves it belongs to ``name``."""
        manifest = await self._load(record.digest)
        fetched = manifest is None
        if manifest is None:
            manifest = await self._fetch_digest(client, name, record.digest)
        await self._belongs(client, name, manifest)
        return TagAnswer(manifest, fetched=fetched)

    async def _revalidate(
        self, client: RegistryClient, name: str, tag: str, key: str, ttl: float
    ) -> TagAnswer:
        """Ask the upstream what the tag names now; on failure, what it named last (stale)."""
        # A revalidation that ended just before this one started may have answered already.
        answer = await self._known_answer(client, name, tag, key, ttl)
        if answer is not None:
            return answer
        record = self._tags.get(key)
        if record is not None:
            backoff = client.backoff_reason(name)
            if backoff is not None:
                stale = await self._load(record.digest)
                if stale is not None:
                    await self._belongs(client, name, stale)
                    return TagAnswer(stale.served_stale(backoff), fetched=False)
        try:
            answer = await self._current(client, name, tag)
        except UpstreamNotFound:
            # The upstream says the tag is not there: an answer, not a failure. Remembered, so
            # the next requests within the negative TTL do not ask again.
            self._negative.remember(key)
            return await self._gone(client, name, tag, record)
        except UpstreamError as exc:
            stale = await self._load(record.digest) if record is not None else None
            if stale is None:
                raise
            log.warning(
                "tag.stale",
                repository=name,
                tag=tag,
                digest=str(stale.digest),
                reason=exc.reason,
                detail=exc.detail,
            )
            await self._belongs(client, name, stale)
            return TagAnswer(stale.served_stale(exc.reason), fetched=False)
        manifest = answer.manifest
        await self._belongs(client, name, manifest)
        await self._save_tag(key, TagRecord(manifest.digest, manifest.media_type, self.clock()))
        return answer

    async def _current(self, client: RegistryClient, name: str, tag: str) -> TagAnswer:
        """The manifest the tag names upstream now: a HEAD, and a GET only for new content."""
        head = await client.head_manifest(name, tag)
        if head.digest is None:
            # An upstream that does not tell digests on HEAD: the GET by tag is the only way.
            return TagAnswer(await self._fetch(client, name, tag), fetched=True)
        cached = await self._load(head.digest)
        if cached is not None:
            return TagAnswer(cached, fetched=False)
        # New content (or the known digest's bytes are no longer cached): one counted GET.
        return TagAnswer(await self._fetch_digest(client, name, head.digest), fetched=True)

    async def _gone(
        self, client: RegistryClient, name: str, tag: str, record: TagRecord | None
    ) -> TagAnswer:
        """The answer for a tag the upstream does not have (now, or within the negative TTL)."""
        if record is None:
            raise UpstreamNotFound(f"{name}:{tag} is not known upstream", status=404)
        if self._keep_deleted:
            kept = await self._load(record.digest)
            if kept is not None:
                await self._belongs(client, name, kept)
                return TagAnswer(kept.served_stale(DELETED_REASON), fetched=False, deleted=True)
        raise TagDeleted(
            f"{name}:{tag} was deleted upstream (it named {record.digest})", status=404
        )

    def _count_deleted(self, client: RegistryClient, action: str) -> None:
        if self._on_deleted_tag is not None:
            self._on_deleted_tag(client.host, action)

    def _is_fresh(self, record: TagRecord, ttl: float) -> bool:
        return self.clock() - record.checked_at < ttl

    # --- storage (fail-safe: a failing backend is a miss, a write that did not happen) ----------

    def _in_memory(self, digest: Digest) -> Manifest | None:
        """The manifest if memory has it, counted as used: callers serve it."""
        cached = self._manifests.get(digest.hex)
        if cached is not None:
            self._on_use(manifest_key(digest))
        return cached

    def _warm_digest(self, client: RegistryClient, name: str, digest: Digest) -> Manifest | None:
        """A manifest by digest that memory has and knows belongs to ``name`` (what _admit would
        confirm without I/O), else None."""
        if not self._links.known(client.host, name, digest):
            return None
        return self._in_memory(digest)

    async def _load(self, digest: Digest) -> Manifest | None:
        """The cached manifest (from memory or storage), counted as used: callers serve it."""
        cached = self._in_memory(digest)
        if cached is not None:
            return cached
        found = await self._storage.get(manifest_key(digest))
        if found is None:
            return None
        data, info = found
        if Digest.of(data) != digest:
            # Never serve bytes that do not match their name; drop the entry and refetch.
            log.error("manifest.corrupt", digest=str(digest))
            await self._storage.delete(manifest_key(digest))
            return None
        media_type = media_type_of(data, info.content_type)
        if media_type is None:
            # Stored by an older version, which kept any type the upstream declared: not a
            # manifest to serve. Dropped like a corrupt entry; fetched (and judged) again.
            log.error("manifest.unknown_type", digest=str(digest), media_type=info.content_type)
            await self._storage.delete(manifest_key(digest))
            return None
        manifest = Manifest(data, media_type, digest)
        self._manifests[digest.hex] = manifest
        self._on_use(manifest_key(digest))
        return manifest

    async def _store(self, manifest: Manifest) -> None:
        self._manifests[manifest.digest.hex] = manifest
        self._on_use(manifest_key(manifest.digest))
        # Overwrite: the bytes are verified, and a corrupt entry whose delete failed is healed.
        await self._storage.put(
            manifest_key(manifest.digest),
            manifest.data,
            content_type=manifest.media_type,
            overwrite=True,
        )

    async def _load_tag(self, key: str) -> None:
        await load_newer(self._storage, key, TagRecord.from_json, self._tags)

    async def _save_tag(self, key: str, record: TagRecord) -> None:
        self._tags[key] = record
        await self._storage.put(key, record.to_json(), overwrite=True)


def _missing_key(client: RegistryClient, name: str, digest: Digest) -> tuple[str, ...]:
    return ("manifest", client.host, name, digest.hex)
