"""What the blob cache tells the cache's housekeeping, in three cheap calls.

- ``served``: a blob was answered from the cache (its last use, ``proxy.cache.upkeep.lastuse``);
- ``stored``: a verified blob landed in the cache (a use too, and the size check may wake the
  evictor; a prefetch's is no use: it stays *speculative* until a client asks,
  ``proxy.cache.upkeep.pins``);
- ``hold``: a client is about to read a cached blob; eviction leaves it alone until the
  returned release is called (``proxy.cache.upkeep.pins``).

A ``BlobUsage()`` without parts does nothing: the blob cache works the same without housekeeping.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.cache.keys import blob_key
from proxy.cache.upkeep.lastuse import LastUse
from proxy.cache.upkeep.pins import BlobPins
from proxy.registry.reference import Digest


def _nothing() -> None:
    pass


class BlobUsage:
    def __init__(
        self,
        last_use: LastUse | None = None,
        pins: BlobPins | None = None,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.last_use = last_use
        self.pins = pins
        self.on_stored = on_stored

    def served(self, digest: Digest) -> None:
        if self.last_use is not None:
            self.last_use.touch(blob_key(digest))
        if self.pins is not None:
            self.pins.claim(digest.hex)

    def stored(self, digest: Digest, size: int, *, prefetch: bool = False) -> None:
        if prefetch and self.pins is not None:
            self.pins.speculate(digest.hex, size)
        else:
            self.served(digest)
        if self.on_stored is not None:
            self.on_stored(size)

    async def hold(self, digest: Digest) -> Callable[[], None]:
        """Wait out an eviction of the blob in progress, then hold it; returns the release."""
        pins = self.pins
        if pins is None:
            return _nothing
        await pins.settled(digest.hex)
        pins.hold(digest.hex)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                pins.release(digest.hex)

        return release
