"""Negative caching: remember for a short while that the upstream said 404.

Tools that probe for optional content (cosign's ``sha256-<hex>.sig`` tags, the referrers API on a
registry without it, a build asking for a tag not pushed yet) ask for what does not exist on every
run. Each such answer is remembered for ``PROXY_NEGATIVE_TTL`` seconds, so a fleet asking the same
question makes one upstream request per TTL instead of one per build; a tag pushed upstream is
visible after at most that long.

In memory only, per instance: an entry is worth one upstream HEAD, less than a write to shared
storage would cost, and a short TTL keeps instances from disagreeing for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

import cachetools

MAX_ENTRIES = 100_000


class NegativeCache:
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        # key -> the clock time the answer stops being trusted
        self._until: cachetools.LRUCache[Hashable, float] = cachetools.LRUCache(MAX_ENTRIES)

    def remember(self, key: Hashable) -> None:
        if self.ttl > 0:
            self._until[key] = self.clock() + self.ttl

    def forget(self, key: Hashable) -> None:
        self._until.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if self.clock() < until:
            return True
        self._until.pop(key, None)
        return False
