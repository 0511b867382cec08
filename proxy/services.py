"""The objects a running proxy is made of, opened once and shared.

``open_services`` builds them for the lifetime of a block; the HTTP app (``proxy.http.app``) and the
command-line tools (``warm``) both run on it, so they cache in exactly the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from proxy.cache.blobs import BlobCache
from proxy.cache.links import ContentLinks
from proxy.cache.manifests import ManifestCache
from proxy.cache.pieces import PieceSettings
from proxy.cache.prefetch import Prefetcher
from proxy.cache.referrers import ReferrersCache
from proxy.cache.spool import Spool, spool_location
from proxy.cache.taglists import TagLists
from proxy.cache.upkeep.diskfull import DiskFullAlarm
from proxy.cache.upkeep.housekeeping import Housekeeper
from proxy.cache.upkeep.janitor import Janitor
from proxy.cache.upkeep.lastuse import LastUse, UseRecords
from proxy.cache.upkeep.pins import BlobPins
from proxy.cache.upkeep.scrub import Scrubber
from proxy.cache.upkeep.usage import BlobUsage
from proxy.config import DOCKER_HUB_HOST, Settings
from proxy.ops.activity import Activity
from proxy.ops.fleet import Fleet, new_instance_id
from proxy.ops.metrics import Metrics
from proxy.ops.observers import Observers
from proxy.ops.quota import QuotaTracker
from proxy.registry.policy import RepositoryPolicy, TagTtl
from proxy.storage import Storage
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage
from proxy.upstream.client import RETRY_DELAYS, RegistryClient
from proxy.upstream.registry import Upstreams

CONNECTION_POOL_SIZE = 100
RESOLVED_MEMO = 4096
# Lifetime of presigned S3 URLs handed to clients with PROXY_BLOB_REDIRECT=true.
BLOB_REDIRECT_SECONDS = 300


@dataclass(slots=True)
class Services:
    settings: Settings
    storage: FailSafeStorage
    upstreams: Upstreams
    blobs: BlobCache
    manifests: ManifestCache
    referrers: ReferrersCache
    metrics: Metrics
    quotas: QuotaTracker
    activity: Activity
    observers: Observers  # tells metrics, quotas and activity what happened
    policy: RepositoryPolicy
    fleet: Fleet
    janitor: Janitor
    prefetch: Prefetcher
    tag_lists: TagLists

    # Names resolved and allowed already: every warm request resolves the same few again.
    # (Only allowed names are kept: a refusal is raised, and checked again, every time.)
    _resolved: dict[tuple[str, str | None], tuple[RegistryClient, str]] = field(
        default_factory=dict
    )

    def resolve(self, name: str, ns: str | None) -> tuple[RegistryClient, str]:
        """(client, upstream repository name) for a request, refused (403) by the repository
        rules before anything is asked upstream. Every route and tool resolves names here."""
        key = (name, ns)
        found = self._resolved.get(key)
        if found is None:
            client, upstream_name = self.upstreams.resolve(name, ns)
            self.policy.check(client.host, upstream_name)
            if len(self._resolved) >= RESOLVED_MEMO:
                self._resolved.clear()
            found = self._resolved[key] = (client, upstream_name)
        return found


def create_storage(settings: Settings) -> Storage:
    """The storage backend ``PROXY_STORAGE`` names (not yet opened)."""
    if settings.storage.location.is_s3:
        from proxy.storage.s3 import S3Storage

        return S3Storage(
            settings.storage.location.bucket or "",
            settings.storage.location.prefix,
            endpoint_url=settings.storage.s3_endpoint_url,
        )
    assert settings.storage.location.path is not None
    return FilesystemStorage(settings.storage.location.path)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    storage: Storage | None = None,
    retry_delays: tuple[float, ...] | None = None,
    housekeeping: bool = False,
) -> AsyncIterator[Services]:
    """Open everything a proxy needs (connection pool, storage, caches) for a block's lifetime.

    ``storage`` and ``retry_delays`` let tests swap parts in. ``housekeeping`` runs the cache's
    janitor in the background (the server does; one-shot tools only flush their uses at the
    end). Raises StorageError when the storage cannot be opened (start-up fails loudly rather
    than caching nothing).
    """
    metrics = Metrics()
    quotas = QuotaTracker(warn_remaining=settings.operations.quota_warn_remaining)
    activity = Activity()
    observers = Observers(metrics, quotas, activity)
    disk_full = DiskFullAlarm(
        on_event=lambda where: metrics.housekeeping.disk_full.labels(where).inc()
    )
    safe_storage = FailSafeStorage(
        storage or create_storage(settings),
        on_error=metrics.storage_errors.inc,
        on_full=lambda exc: disk_full.report("storage", str(exc)),
        on_corrupt=lambda found_by: metrics.housekeeping.corrupt.labels(found_by).inc(),
    )
    connector = aiohttp.TCPConnector(limit=CONNECTION_POOL_SIZE, ttl_dns_cache=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        await safe_storage.open()
        clients = [
            RegistryClient(
                upstream,
                session,
                connect_timeout=settings.upstream.connect_timeout,
                read_timeout=settings.upstream.read_timeout,
                retry_delays=RETRY_DELAYS if retry_delays is None else retry_delays,
                observer=observers,
            )
            for upstream in settings.upstreams
        ]
        spool = Spool(
            spool_location(settings).path,
            max_size=settings.storage.spool_max_size,
            min_free=settings.storage.spool_min_free,
            on_full=disk_full.report,
        )
        spool.open()
        instance_id = new_instance_id()  # one process, one identity: its records and its page
        last_use = LastUse(UseRecords(safe_storage, instance_id))
        last_use.enabled = settings.cache.record_access
        pins = BlobPins()
        janitor = Janitor(
            housekeeper(settings, safe_storage, last_use, pins, spool),
            last_use,
            sweep_interval=settings.cache.sweep_interval,
            metrics=metrics.housekeeping,
            scrubber=None
            if settings.cache.scrub_rate is None
            else Scrubber(
                safe_storage,
                rate=settings.cache.scrub_rate,
                on_bytes=metrics.housekeeping.scrubbed_bytes.inc,
            ),
        )
        disk_full.make_room = janitor.make_room
        links = ContentLinks(safe_storage, negative_ttl=settings.policy.negative_ttl)
        blobs = BlobCache(
            safe_storage,
            spool,
            links=links,
            redirect_expires=BLOB_REDIRECT_SECONDS if settings.storage.blob_redirect else None,
            max_fetches=settings.upstream.max_fetches,
            usage=BlobUsage(last_use, pins, janitor.stored),
            pieces=PieceSettings(
                settings.upstream.fetch_pieces, settings.upstream.fetch_piece_threshold
            ),
            observer=metrics,
            limit=janitor.limit_now,
        )
        tag_ttl = TagTtl(settings.policy.tag_ttl, settings.policy.tag_ttl_rules, DOCKER_HUB_HOST)
        manifests = ManifestCache(
            safe_storage,
            tag_ttl=tag_ttl,
            max_manifest_bytes=settings.upstream.max_manifest_bytes,
            links=links,
            negative_ttl=settings.policy.negative_ttl,
            keep_deleted_tags=settings.policy.keep_deleted_tags,
            on_deleted_tag=metrics.deleted_tag,
            on_use=last_use.touch,
        )
        referrers = ReferrersCache(
            safe_storage,
            tag_ttl=tag_ttl,
            negative_ttl=settings.policy.negative_ttl,
            max_bytes=settings.upstream.max_manifest_bytes,
        )
        prefetch = Prefetcher(
            blobs,
            manifests,
            enabled=settings.upstream.prefetch,
            # Client requests come first: prefetches get a quarter of the fetch slots.
            max_fetches=max(1, settings.upstream.max_fetches // 4),
            observer=metrics,
            room=janitor,
        )
        upstreams = Upstreams(clients[0], {c.host: c for c in clients[1:]})
        policy = RepositoryPolicy(
            {u.host: u.repository_rules for u in settings.upstreams},
            default_host=DOCKER_HUB_HOST,
        )
        metrics.in_flight.set_function(
            lambda: blobs.in_flight + manifests.in_flight + referrers.in_flight
        )
        metrics.memory_cache_bytes.labels("manifests").set_function(lambda: manifests.memory_bytes)
        metrics.memory_cache_bytes.labels("small_blobs").set_function(lambda: blobs.memory_bytes)
        fleet = Fleet(
            safe_storage,
            activity,
            lambda: {"downloads": blobs.downloads(), "storage_errors": safe_storage.errors},
            instance_id=instance_id,
        )
        if housekeeping:
            janitor.start()
        try:
            yield Services(
                settings,
                safe_storage,
                upstreams,
                blobs,
                manifests,
                referrers,
                metrics,
                quotas,
                activity,
                observers,
                policy,
                fleet,
                janitor,
                prefetch,
                TagLists(settings.policy.negative_ttl),
            )
        finally:
            await prefetch.close()
            await blobs.close()
            await janitor.stop()
            await safe_storage.close()


def housekeeper(
    settings: Settings,
    storage: FailSafeStorage,
    last_use: LastUse | None = None,
    pins: BlobPins | None = None,
    spool: Spool | None = None,
) -> Housekeeper:
    """The cache's housekeeping for these settings (the server's janitor and ``cache gc``)."""
    inner = storage.inner
    root: Path | None = None
    temp_dirs: list[Path] = []
    if isinstance(inner, FilesystemStorage):
        root = inner.root
        temp_dirs.append(inner.tmp_dir)
    temp_dirs.append(spool.files if spool is not None else spool_location(settings).files)
    records = last_use.records if last_use is not None else UseRecords(storage, new_instance_id())
    return Housekeeper(
        storage,
        records,
        limit=settings.cache.limit,
        expire_unused=settings.cache.expire_unused,
        disk_path=root,
        temp_dirs=tuple(temp_dirs),
        pins=pins,
        pending=(lambda: last_use.pending) if last_use is not None else None,
    )
