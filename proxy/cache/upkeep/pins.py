"""Blobs this process is serving from the cache right now, blobs it is evicting, and blobs it
prefetched that no client asked for yet.

Eviction must never take a blob from a client that is reading it. A cached read holds the blob
(``hold`` when the cache is asked, ``release`` when the response is done); the evictor asks
``begin_eviction``, which refuses a held blob and otherwise marks it as going. While a blob is
marked, a new request waits (``settled``) and then finds it gone and fetches it from the
upstream, so it never gets a cache answer for a file that is about to vanish.

A prefetched blob no client asked for yet is *speculative*: it was never used, so eviction
takes it before anything a client used (``is_speculative``), and the bytes of all of them are
what prefetching may hold of the cache at most (``speculative_bytes``). It stops being
speculative when a client is served it, when it is evicted, or after ``SPECULATIVE_SECONDS``.

Everything here runs on the event loop: a check and the mark that follows it are one step.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import cachetools

#: Prefetched blobs remembered as never used, at most, and for how long.
SPECULATIVE_ENTRIES = 10_000
SPECULATIVE_SECONDS = 3600.0


class BlobPins:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: Counter[str] = Counter()
        self._evicting: dict[str, asyncio.Event] = {}
        self.waiting = 0  # requests waiting for an eviction to finish
        self._speculative: cachetools.TTLCache[str, int] = cachetools.TTLCache(
            SPECULATIVE_ENTRIES, SPECULATIVE_SECONDS, timer=clock
        )

    def speculate(self, hex_digest: str, size: int) -> None:
        """A prefetch stored this blob of ``size`` bytes; no client asked for it yet."""
        self._speculative[hex_digest] = size

    def claim(self, hex_digest: str) -> None:
        """A client was served the blob (or it is gone): not speculative any more."""
        if self._speculative:  # on every hit: nothing to look up while nothing is prefetched
            self._speculative.pop(hex_digest, None)

    def is_speculative(self, hex_digest: str) -> bool:
        return hex_digest in self._speculative

    @property
    def speculative_bytes(self) -> int:
        return sum(self._speculative.values())

    def hold(self, hex_digest: str) -> None:
        self._held[hex_digest] += 1

    def release(self, hex_digest: str) -> None:
        self._held[hex_digest] -= 1
        if self._held[hex_digest] <= 0:
            del self._held[hex_digest]

    def is_held(self, hex_digest: str) -> bool:
        return hex_digest in self._held

    @property
    def held(self) -> int:
        """How many blobs are being read from the cache right now."""
        return len(self._held)

    async def settled(self, hex_digest: str) -> None:
        """Wait while the blob is being evicted (returns at once otherwise)."""
        event = self._evicting.get(hex_digest)
        if event is not None:
            self.waiting += 1
            try:
                await event.wait()
            finally:
                self.waiting -= 1

    def begin_eviction(self, hex_digest: str) -> bool:
        """Mark the blob as going, unless a client is reading it (then False)."""
        if hex_digest in self._held or hex_digest in self._evicting:
            return False
        self._evicting[hex_digest] = asyncio.Event()
        return True

    def end_eviction(self, hex_digest: str) -> None:
        event = self._evicting.pop(hex_digest, None)
        if event is not None:
            event.set()
