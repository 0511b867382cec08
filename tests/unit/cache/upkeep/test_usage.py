"""proxy/cache/upkeep/usage.py: what the blob cache tells housekeeping. A blob served or stored
for a client is a use; one a prefetch stored is no use but speculative until a client is served
it; a hold is released once, however often its release is called."""

from __future__ import annotations

from pathlib import Path

from support.clock import Clock

from proxy.cache.keys import blob_key
from proxy.cache.upkeep.lastuse import LastUse, UseRecords
from proxy.cache.upkeep.pins import BlobPins
from proxy.cache.upkeep.usage import BlobUsage
from proxy.registry.reference import Digest
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage

PREFETCHED = Digest.of(b"a layer a prefetch stored")
FETCHED = Digest.of(b"a layer a client asked for")


def test_uses_sizes_and_speculation(tmp_path: Path) -> None:
    clock = Clock()
    records = UseRecords(FailSafeStorage(FilesystemStorage(tmp_path)), "instance")
    last_use, pins, sizes = LastUse(records, clock=clock), BlobPins(), list[int]()
    usage = BlobUsage(last_use, pins, sizes.append)
    usage.stored(PREFETCHED, 10, prefetch=True)
    assert last_use.pending == {} and pins.is_speculative(PREFETCHED.hex) and sizes == [10]
    clock.advance(5)
    usage.served(PREFETCHED)
    assert last_use.pending == {blob_key(PREFETCHED): clock.now}
    assert not pins.is_speculative(PREFETCHED.hex)
    usage.stored(FETCHED, 7)
    assert blob_key(FETCHED) in last_use.pending and sizes == [10, 7]


async def test_a_hold_is_released_once_however_often_release_is_called() -> None:
    pins = BlobPins()
    usage = BlobUsage(pins=pins)
    first, second = await usage.hold(FETCHED), await usage.hold(FETCHED)
    first()
    first()
    assert pins.is_held(FETCHED.hex), "the second reader still holds it"
    second()
    assert not pins.is_held(FETCHED.hex)


async def test_without_housekeeping_it_does_nothing() -> None:
    usage = BlobUsage()
    usage.served(FETCHED)
    usage.stored(PREFETCHED, 1, prefetch=True)
    (await usage.hold(FETCHED))()
