"""The objects a running proxy is made of, built once per app and shared by the handlers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from proxy.cache.blobs import BlobCache
from proxy.cache.manifests import ManifestCache
from proxy.config import Settings
from proxy.metrics import Metrics
from proxy.storage import Storage, StorageError
from proxy.upstream.registry import Upstreams

log = structlog.get_logger(__name__)

# After a storage error the instance reports not ready for this long (unless a check succeeds).
STORAGE_ERROR_WINDOW = 30.0


@dataclass(slots=True)
class StorageHealth:
    """Remembers recent storage failures so readiness can report them."""

    metrics: Metrics | None = None
    last_error: str | None = None
    last_error_at: float = 0.0
    errors: int = 0

    def record(self, exc: StorageError) -> None:
        self.errors += 1
        if self.metrics is not None:
            self.metrics.storage_errors.inc()
        # One warning per window: a dead S3 endpoint must not flood the log once per request.
        if time.monotonic() - self.last_error_at > STORAGE_ERROR_WINDOW:
            log.warning("storage.error", detail=str(exc), note="serving without caching")
        self.last_error = str(exc)
        self.last_error_at = time.monotonic()

    def recently_failed(self) -> bool:
        return (
            self.last_error is not None
            and time.monotonic() - self.last_error_at < STORAGE_ERROR_WINDOW
        )


@dataclass(slots=True)
class Services:
    settings: Settings
    storage: Storage
    upstreams: Upstreams
    blobs: BlobCache
    manifests: ManifestCache
    metrics: Metrics
    storage_health: StorageHealth = field(default_factory=StorageHealth)
