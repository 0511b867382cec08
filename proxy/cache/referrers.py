"""OCI 1.1 referrers (``GET /v2/<name>/referrers/<digest>``), cached like a tag.

Signing and SBOM tools (cosign, notation, oras) ask for the referrers of an image on every
verification. The list can change (a new signature is pushed), so it is treated like a tag: kept
in storage with the time it was confirmed, trusted for the TTL of the tag ``sha256-<hex>`` (the
tag the same list lives under in the fallback tag schema, so one ``PROXY_TAG_TTL_RULES`` pattern
such as ``*:sha256-*=600`` governs both), then fetched again by one request for all waiting
clients; on any failure the last list is served stale, with its reason.

Filtering: the whole list is fetched and cached once per subject, and ``artifactType`` filters are
applied here (``OCI-Filters-Applied: artifactType``), so each filter a client uses costs no upstream
request of its own, and the filter works whether or not the upstream implements it. An upstream
that pages its answer (``Link: <...>; rel="next"``) is read to the end (at most ``MAX_PAGES``) and
served as one index.

An upstream without the API answers 404 (Docker Hub, distribution 2.8). The distribution spec
says a registry that supports the API must never answer 404 to it, and a client that gets one
must fall back to the tag schema. So the proxy passes the 404 on (remembered for the negative
TTL, like any 404): the client falls back to ``sha256-<hex>`` / ``sha256-<hex>.sig`` tags, which are
ordinary tags here, negative caching included.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cachetools
import structlog

from proxy.cache.keys import referrers_key
from proxy.cache.negative import NegativeCache
from proxy.cache.records import load_newer
from proxy.concurrency.singleflight import SingleFlight
from proxy.ops.logs import mark_cache
from proxy.registry.manifest import OCI_INDEX
from proxy.registry.policy import TagTtl
from proxy.registry.reference import Digest
from proxy.storage.failsafe import FailSafeStorage
from proxy.upstream.client import RegistryClient
from proxy.upstream.errors import UpstreamError, UpstreamInvalid, UpstreamNotFound

log = structlog.get_logger(__name__)

MAX_PAGES = 20
MEMORY_ENTRIES = 10_000


def referrers_tag(subject: Digest) -> str:
    """The tag the distribution spec's fallback schema keeps a subject's referrers under."""
    return f"sha256-{subject.hex}"


@dataclass(frozen=True, slots=True)
class ReferrersRecord:
    index: bytes  # an OCI image index, as the upstream sent it (or pages joined into one)
    checked_at: float  # wall-clock seconds: shared across instances through storage

    def to_json(self) -> bytes:
        index = base64.b64encode(self.index).decode()
        return json.dumps({"index": index, "checked_at": self.checked_at}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReferrersRecord | None:
        try:
            raw = json.loads(data)
            return cls(base64.b64decode(raw["index"], validate=True), float(raw["checked_at"]))
        except Exception:
            return None


@dataclass(frozen=True, slots=True)
class ReferrersAnswer:
    index: bytes
    filtered: bool  # an artifactType filter was applied
    stale_reason: str | None = None


class ReferrersCache:
    def __init__(
        self,
        storage: FailSafeStorage,
        *,
        tag_ttl: TagTtl,
        negative_ttl: float,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._tag_ttl = tag_ttl
        self._max_bytes = max_bytes
        self.clock = clock
        self._negative = NegativeCache(negative_ttl, clock=lambda: self.clock())
        self._records: cachetools.LRUCache[str, ReferrersRecord] = cachetools.LRUCache(
            MEMORY_ENTRIES
        )
        self._flights: SingleFlight[tuple[bytes, str | None]] = SingleFlight()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def get(
        self, client: RegistryClient, name: str, subject: Digest, artifact_type: str | None
    ) -> ReferrersAnswer:
        """The referrers of ``subject`` in ``name``; UpstreamNotFound when the upstream has no
        referrers API (the client then falls back to the tag schema)."""
        index, stale_reason = await self._index(client, name, subject)
        if artifact_type is None:
            return ReferrersAnswer(index, False, stale_reason)
        return ReferrersAnswer(filter_index(index, artifact_type), True, stale_reason)

    async def _index(
        self, client: RegistryClient, name: str, subject: Digest
    ) -> tuple[bytes, str | None]:
        key = referrers_key(client.host, name, subject)
        ttl = self._tag_ttl.seconds(client.host, name, referrers_tag(subject))
        record = self._records.get(key)
        if record is None or not self._is_fresh(record, ttl):
            if key in self._negative:
                mark_cache("negative")
                raise _not_supported(name)
            await self._load(key)
            record = self._records.get(key)
        if record is not None and self._is_fresh(record, ttl):
            mark_cache("hit")
            return record.index, None
        index, stale_reason = await self._flights.run(
            key, lambda: self._revalidate(client, name, subject, key, ttl)
        )
        mark_cache("stale" if stale_reason else "miss")
        return index, stale_reason

    async def _revalidate(
        self, client: RegistryClient, name: str, subject: Digest, key: str, ttl: float
    ) -> tuple[bytes, str | None]:
        record = self._records.get(key)
        if record is not None and self._is_fresh(record, ttl):
            return record.index, None
        if key in self._negative:
            raise _not_supported(name)
        if record is not None:
            backoff = client.backoff_reason(name)
            if backoff is not None:
                return record.index, backoff
        try:
            index = await self._fetch(client, name, subject)
        except UpstreamNotFound:
            self._negative.remember(key)
            raise
        except UpstreamError as exc:
            if record is None:
                raise
            log.warning(
                "referrers.stale",
                repository=name,
                subject=str(subject),
                reason=exc.reason,
                detail=exc.detail,
            )
            return record.index, exc.reason
        record = ReferrersRecord(index, self.clock())
        self._records[key] = record
        await self._storage.put(key, record.to_json(), overwrite=True)
        return index, None

    async def _fetch(self, client: RegistryClient, name: str, subject: Digest) -> bytes:
        """The whole list from the upstream: its bytes, or its pages joined into one index."""
        path: str | None = f"/referrers/{subject}"
        pages: list[bytes] = []
        descriptors: list[Any] = []
        while path is not None:
            if len(pages) == MAX_PAGES:
                raise UpstreamInvalid(f"referrers of {subject}: more than {MAX_PAGES} pages")
            body, link = await client.get_referrers(name, path, self._max_bytes)
            descriptors.extend(_descriptors(body, subject))
            pages.append(body)
            path = _next_page(link, name)
        if len(pages) == 1:
            return pages[0]
        joined = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return json.dumps(joined).encode()

    async def _load(self, key: str) -> None:
        await load_newer(self._storage, key, ReferrersRecord.from_json, self._records)

    def _is_fresh(self, record: ReferrersRecord, ttl: float) -> bool:
        return self.clock() - record.checked_at < ttl


def filter_index(index: bytes, artifact_type: str) -> bytes:
    """The index with only the descriptors of ``artifact_type`` (the rest of it unchanged)."""
    document = json.loads(index)
    document["manifests"] = [
        d
        for d in document.get("manifests", [])
        if isinstance(d, dict) and d.get("artifactType") == artifact_type
    ]
    return json.dumps(document).encode()


def _descriptors(body: bytes, subject: Digest) -> list[Any]:
    """The ``manifests`` of a referrers page; UpstreamInvalid unless it is an image index."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    manifests = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(manifests, list):
        raise UpstreamInvalid(f"referrers of {subject}: the upstream's answer is not an index")
    return manifests


def _next_page(link: str | None, name: str) -> str | None:
    """The path (after ``/v2/<name>``) of the next page a ``Link`` header points to, if any.

    Only a link to the same repository's referrers on the same registry is followed: the
    client adds its own origin, so an absolute URL elsewhere is never fetched.
    """
    if not link or 'rel="next"' not in link:
        return None
    start, end = link.find("<"), link.find(">")
    if start < 0 or end < start:
        return None
    target = urlsplit(link[start + 1 : end])
    prefix = f"/v2/{name}/referrers/"
    if not target.path.startswith(prefix):
        return None
    path = target.path[len(f"/v2/{name}") :]
    return f"{path}?{target.query}" if target.query else path


def _not_supported(name: str) -> UpstreamNotFound:
    return UpstreamNotFound(
        f"the upstream has no referrers API for {name} (answer remembered); "
        "use the tag schema sha256-<hex>",
        status=404,
    )
