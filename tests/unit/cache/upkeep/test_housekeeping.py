"""Sweeps over a real cache directory (proxy/cache/upkeep/housekeeping.py with the inventory it
takes): what a manifest in use keeps alive, and what a sweep that could not read everything does.

The decisions themselves are tested on hand-built inventories in test_retention.py; here the
inventory is taken from storage, as the server and ``cache gc`` take it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from proxy.cache.keys import blob_key, manifest_key
from proxy.cache.upkeep.housekeeping import Housekeeper, SweepAborted
from proxy.cache.upkeep.lastuse import UseRecords
from proxy.registry.manifest import DOCKER_MANIFEST
from proxy.registry.reference import Digest
from proxy.storage import StorageError
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage

DAY = 86400.0
CONFIG, LAYER = b'{"os": "linux"}', b"a layer nobody asked for in two months"


class ManifestReadsFail(FilesystemStorage):
    """A directory whose reads of manifests fail while ``failing`` is set."""

    failing = False

    async def get(self, key: str) -> tuple[bytes, object] | None:  # type: ignore[override]
        if self.failing and key.startswith("manifests/"):
            raise StorageError(f"injected read failure for {key}")
        return await super().get(key)


async def cached_image(
    root: Path, storage_class: type[FilesystemStorage]
) -> tuple[FilesystemStorage, FailSafeStorage, Digest]:
    """A cache holding one image (manifest, config, layer), every entry written 60 days ago."""
    storage = storage_class(root)
    await storage.open()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"digest": str(Digest.of(CONFIG)), "size": len(CONFIG)},
            "layers": [{"digest": str(Digest.of(LAYER)), "size": len(LAYER)}],
        }
    ).encode()
    for key, data in (
        (blob_key(Digest.of(CONFIG)), CONFIG),
        (blob_key(Digest.of(LAYER)), LAYER),
        (manifest_key(Digest.of(manifest)), manifest),
    ):
        await storage.put(key, data, content_type=DOCKER_MANIFEST if key[0] == "m" else None)
        written = time.time() - 60 * DAY
        os.utime(storage.data_dir / key, (written, written))
    return storage, FailSafeStorage(storage, cooldown=0), Digest.of(manifest)


def present(storage: FilesystemStorage, *data: bytes) -> list[bool]:
    return [(storage.data_dir / blob_key(Digest.of(d))).exists() for d in data]


async def test_layers_of_a_manifest_in_use_are_kept_by_a_sweep(tmp_path: Path) -> None:
    """Docker asks for the manifest on every pull, never for layers it has: the layers' last
    use is their manifest's (issue 21, mutation: no propagation in the inventory)."""
    storage, safe, manifest = await cached_image(tmp_path, FilesystemStorage)
    records = UseRecords(safe, "inst")
    assert await records.write({manifest_key(manifest): time.time() - DAY}, time.time())
    keeper = Housekeeper(safe, records, limit=None, expire_unused=30 * DAY)
    report = await keeper.sweep()
    assert report.expired == []
    assert present(storage, CONFIG, LAYER) == [True, True]

    # Once the manifest is not used for the window either, everything goes.
    keeper.clock = lambda: time.time() + 40 * DAY
    report = await keeper.sweep()
    assert len(report.expired) == 3
    assert present(storage, CONFIG, LAYER) == [False, False]


async def test_a_sweep_that_cannot_read_a_manifest_deletes_nothing(tmp_path: Path) -> None:
    """A manifest it could not read might name blobs that would look unused: the sweep stops
    (issue 21, mutation: a sweep going on after a storage error while reading manifests)."""
    storage, safe, manifest = await cached_image(tmp_path, ManifestReadsFail)
    assert isinstance(storage, ManifestReadsFail)
    records = UseRecords(safe, "inst")
    assert await records.write({manifest_key(manifest): time.time() - DAY}, time.time())
    keeper = Housekeeper(safe, records, limit=None, expire_unused=30 * DAY)
    storage.failing = True
    with pytest.raises(SweepAborted):
        await keeper.sweep()
    with pytest.raises(SweepAborted):
        await keeper.evict(make_room=True)
    assert present(storage, CONFIG, LAYER) == [True, True]
    storage.failing = False
    assert (await keeper.sweep()).expired == []
