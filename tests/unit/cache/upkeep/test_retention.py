"""Which entries expiry and eviction take (proxy/cache/upkeep/retention.py and inventory.py).

Pure decisions over hand-built inventories: last use passed down from indexes to manifests to
blobs, the size limit in its three forms, expiry by window, eviction order and held blobs.
"""

from __future__ import annotations

import json

from proxy.cache.keys import blob_key, manifest_key
from proxy.cache.upkeep.inventory import Entry, Inventory, Kind, ManifestReferences, propagate_use
from proxy.cache.upkeep.retention import (
    LINK_GRACE,
    DiskSpace,
    choose_evictions,
    dangling_links,
    expired,
    size_limit,
)
from proxy.config import CacheLimit
from proxy.registry.reference import Digest

DAY = 86400.0


def entry(key: str, kind: Kind, size: int, used: float) -> Entry:
    return Entry(key, kind, size, written=used, used=used, last_used=used)


def blob(name: str, size: int, used: float) -> Entry:
    return entry(blob_key(Digest.of(name.encode())), Kind.BLOB, size, used)


def manifest_bytes(blobs: list[str], children: tuple[bytes, ...] = ()) -> bytes:
    document: dict[str, object] = {"schemaVersion": 2}
    if children:
        document["manifests"] = [{"digest": str(Digest.of(c))} for c in children]
    else:
        document["config"] = {"digest": str(Digest.of(blobs[0].encode()))}
        document["layers"] = [{"digest": str(Digest.of(b.encode()))} for b in blobs[1:]]
    return json.dumps(document).encode()


def inventory_of(*entries: Entry) -> Inventory:
    return Inventory(entries={e.key: e for e in entries})


def with_manifest(
    inventory: Inventory, references: ManifestReferences, data: bytes, used: float
) -> Entry:
    digest = Digest.of(data)
    found = entry(manifest_key(digest), Kind.MANIFEST, len(data), used)
    inventory.entries[found.key] = found
    references.learn(digest.hex, data)
    return found


def test_use_passes_from_index_to_manifest_to_blobs() -> None:
    inventory = inventory_of(blob("config", 10, 0), blob("layer", 100, 0), blob("orphan", 5, 0))
    references = ManifestReferences()
    image = manifest_bytes(["config", "layer"])
    with_manifest(inventory, references, image, used=1.0)
    index = with_manifest(inventory, references, manifest_bytes([], (image,)), used=50.0)
    propagate_use(inventory, references)
    used = {e.key: e.last_used for e in inventory.entries.values()}
    assert used[blob_key(Digest.of(b"config"))] == 50.0
    assert used[blob_key(Digest.of(b"layer"))] == 50.0
    assert used[manifest_key(Digest.of(image))] == 50.0
    assert used[blob_key(Digest.of(b"orphan"))] == 0.0
    assert used[index.key] == 50.0


def test_a_corrupt_manifest_refers_to_nothing() -> None:
    references = ManifestReferences()
    references.learn("0" * 64, manifest_bytes(["a", "b"]))
    assert references.get("0" * 64) is None


def test_expiry_keeps_what_a_used_manifest_names() -> None:
    now = 100 * DAY
    inventory = inventory_of(
        blob("kept-layer", 10, now - 60 * DAY),  # unused itself, named by a used manifest
        blob("old-orphan", 10, now - 31 * DAY),  # named by nothing, unused: garbage
        blob("fresh-orphan", 10, now - 1 * DAY),  # named by nothing, used: stays
    )
    references = ManifestReferences()
    with_manifest(inventory, references, manifest_bytes(["kept-layer"]), used=now - 2 * DAY)
    old = with_manifest(inventory, references, manifest_bytes(["x"]), used=now - 40 * DAY)
    tag = entry("tags/docker.io/library/a/_tag/old", Kind.TAG, 100, now - 35 * DAY)
    inventory.entries[tag.key] = tag
    propagate_use(inventory, references)

    gone = expired(inventory, now=now, window=30 * DAY)
    assert {e.key for e in gone} == {blob("old-orphan", 0, 0).key, old.key, tag.key}
    assert gone[0].kind is Kind.BLOB  # blobs go first


def test_eviction_takes_least_recently_used_blobs_before_anything_else() -> None:
    inventory = inventory_of(
        blob("a", 100, 30.0),
        blob("b", 100, 10.0),
        blob("c", 100, 20.0),
        entry("tags/h/r/_tag/t", Kind.TAG, 1, 1.0),  # older, but small and costly to refetch
        entry(manifest_key(Digest.of(b"m")), Kind.MANIFEST, 2, 1.0),
    )
    held = blob("b", 0, 0).key
    chosen = choose_evictions(inventory, target_bytes=150, held=lambda e: e.key == held)
    assert [e.key for e in chosen] == [blob("c", 0, 0).key, blob("a", 0, 0).key]

    everything = choose_evictions(inventory, target_bytes=0, held=lambda e: False)
    assert [e.kind for e in everything] == [Kind.BLOB] * 3 + [Kind.TAG, Kind.MANIFEST]
    assert choose_evictions(inventory, target_bytes=303, held=lambda e: False) == []


def test_size_limit_forms() -> None:
    disk = DiskSpace(total=1000, free=300)
    assert size_limit(CacheLimit(max_bytes=500), 400, disk) == 500
    assert size_limit(CacheLimit(max_bytes=500), 400, None) == 500  # S3
    assert size_limit(CacheLimit(max_fraction=0.25), 400, disk) == 250
    assert size_limit(CacheLimit(max_fraction=0.25), 400, None) is None
    # Keep 10% free: the cache may grow by the free space above 100 bytes.
    assert size_limit(CacheLimit(min_free_fraction=0.1), 400, disk) == 600
    assert size_limit(CacheLimit(min_free_fraction=0.1), 400, DiskSpace(1000, 50)) == 350
    assert size_limit(CacheLimit(min_free_fraction=0.1), 0, DiskSpace(1000, 50)) == 0
    both = CacheLimit(max_bytes=500, min_free_fraction=0.1)
    assert size_limit(both, 400, DiskSpace(1000, 50)) == 350
    assert size_limit(CacheLimit(), 400, disk) is None


def test_links_live_and_die_with_their_content() -> None:
    now = 100 * DAY
    kept = blob("kept", 10, now - 40 * DAY)
    old_link = entry(f"links/docker.io/library/a/_link/{kept.digest_hex}", Kind.LINK, 0, 0.0)
    gone_hex = Digest.of(b"gone").hex
    dangling = entry(f"links/docker.io/library/a/_link/{gone_hex}", Kind.LINK, 0, now - DAY)
    fresh = entry(f"links/docker.io/library/a/_refs/{gone_hex}", Kind.LINK, 0, now - 60)
    referrers = entry(
        f"referrers/docker.io/library/a/_referrers/{kept.digest_hex}", Kind.REFERRERS, 50, 0.0
    )
    inventory = inventory_of(kept, old_link, dangling, fresh, referrers)
    # Links never expire or get evicted on their own ...
    assert {e.key for e in expired(inventory, now=now, window=30 * DAY)} == {
        kept.key,
        referrers.key,
    }
    everything = choose_evictions(inventory, target_bytes=0, held=lambda e: False)
    assert Kind.LINK not in {e.kind for e in everything}
    # ... they go once the content they name is gone (and they are not brand new).
    assert dangling_links(inventory, now=now) == [dangling]
    assert dangling_links(inventory, now=now + LINK_GRACE) == [dangling, fresh]


def test_references_markers_of_earlier_versions_are_garbage() -> None:
    """``_refs`` markers said every reference of a manifest was linked; references grant nothing
    now (issue 21), so sweeps remove them even while their manifest is cached."""
    now = 100 * DAY
    data = manifest_bytes(["config"])
    cached = entry(manifest_key(Digest.of(data)), Kind.MANIFEST, len(data), now)
    marker_key = f"links/docker.io/library/a/_refs/{cached.digest_hex}"
    marker = entry(marker_key, Kind.LINK, 0, now - 2 * LINK_GRACE)
    link = entry(f"links/docker.io/library/a/_link/{cached.digest_hex}", Kind.LINK, 0, 0.0)
    assert dangling_links(inventory_of(cached, marker, link), now=now) == [marker]


def test_blobs_no_client_used_go_first() -> None:
    """A prefetched blob no client asked for was never used: eviction takes it before anything
    a client used, however long ago (issue 21, item 9)."""
    inventory = inventory_of(blob("used-long-ago", 100, 1.0), blob("prefetched", 100, 50.0))
    speculative = blob("prefetched", 0, 0).key
    chosen = choose_evictions(
        inventory, target_bytes=100, held=lambda e: False, unused=lambda e: e.key == speculative
    )
    assert [e.key for e in chosen] == [speculative]
    assert [e.key for e in choose_evictions(inventory, target_bytes=100, held=lambda e: False)] == [
        blob("used-long-ago", 0, 0).key
    ]
