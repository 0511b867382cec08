"""Which entries go: expiry after a window without use, and eviction down to a size.

Pure decisions over an ``Inventory``; ``proxy.cache.upkeep.housekeeping`` carries them out.

- Expiry: every entry whose last use (``Entry.last_used``: its own, or that of a manifest naming
  it) is older than the window.
- Eviction, when the cache is over its size limit: blobs a prefetch brought in that no client
  asked for yet first (they were never used), then least recently used first, down to the
  low-water mark (``LOW_WATER`` of the limit), so that eviction runs in bursts, not on every
  write. Blobs go before tag records and manifests: those are small, and fetching a manifest
  again costs a counted pull while a blob costs none. Blobs a client is reading are skipped.
- Content links (which repositories a digest belongs to) have no use of their own: a sweep
  removes those naming content no longer cached (``dangling_links``), once older than
  ``LINK_GRACE`` (a link may be written just before its content lands).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.cache.upkeep.inventory import Entry, Inventory, Kind
from proxy.config import CacheLimit

#: Eviction stops at this fraction of the limit.
LOW_WATER = 0.9
#: A link naming nothing cached is garbage only once it is this old (seconds).
LINK_GRACE = 3600.0
# At equal times a tag record goes before the manifest it names.
_KIND_ORDER = {Kind.BLOB: 0, Kind.TAG: 1, Kind.REFERRERS: 1, Kind.MANIFEST: 2, Kind.LINK: 3}


@dataclass(frozen=True, slots=True)
class DiskSpace:
    total: int
    free: int

    @classmethod
    def of(cls, path: Path) -> DiskSpace:
        usage = shutil.disk_usage(path)
        return cls(usage.total, usage.free)


def size_limit(limit: CacheLimit, cache_bytes: int, disk: DiskSpace | None) -> int | None:
    """The most bytes the cache may hold now (None: no limit). ``disk`` is the filesystem the
    cache is on (None for S3): a fraction of its size, or the room that leaves it enough free."""
    candidates = []
    if limit.max_bytes is not None:
        candidates.append(limit.max_bytes)
    if disk is not None and limit.max_fraction is not None:
        candidates.append(int(disk.total * limit.max_fraction))
    if disk is not None and limit.min_free_fraction is not None:
        reserve = int(disk.total * limit.min_free_fraction)
        candidates.append(max(0, cache_bytes + disk.free - reserve))
    return min(candidates) if candidates else None


def expired(inventory: Inventory, *, now: float, window: float) -> list[Entry]:
    """Entries not used within ``window`` seconds before ``now``."""
    cutoff = now - window
    return sorted((e for e in _content(inventory) if e.last_used < cutoff), key=_eviction_key)


def eviction_order(
    inventory: Inventory, unused: Callable[[Entry], bool] = lambda entry: False
) -> list[Entry]:
    """Every entry, in the order eviction takes them: blobs never used (prefetched, no client
    asked yet: ``unused``), then blobs by last use, then the rest."""
    return sorted(_content(inventory), key=lambda e: (not unused(e), *_eviction_key(e)))


def dangling_links(inventory: Inventory, *, now: float) -> list[Entry]:
    """Links naming a digest that is no longer cached (older than ``LINK_GRACE``), and the
    ``_refs`` markers of earlier versions (nothing reads them any more)."""
    cached = {
        e.digest_hex for e in inventory.entries.values() if e.kind in (Kind.BLOB, Kind.MANIFEST)
    }
    return [
        e
        for e in inventory.of_kind(Kind.LINK)
        if (e.digest_hex not in cached or "/_refs/" in e.key) and e.written < now - LINK_GRACE
    ]


def _content(inventory: Inventory) -> list[Entry]:
    return [e for e in inventory.entries.values() if e.kind is not Kind.LINK]


def _eviction_key(entry: Entry) -> tuple[int, float, int]:
    return (entry.kind is not Kind.BLOB, entry.last_used, _KIND_ORDER[entry.kind])


def choose_evictions(
    inventory: Inventory,
    *,
    target_bytes: int,
    held: Callable[[Entry], bool],
    unused: Callable[[Entry], bool] = lambda entry: False,
) -> list[Entry]:
    """The least recently used entries to delete to bring the cache down to ``target_bytes``,
    skipping those ``held`` says a client is reading; those never used (``unused``) first."""
    excess = inventory.bytes - target_bytes
    chosen: list[Entry] = []
    for entry in eviction_order(inventory, unused):
        if excess <= 0:
            break
        if held(entry):
            continue
        chosen.append(entry)
        excess -= entry.size
    return chosen
