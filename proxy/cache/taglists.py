"""Tag lists (``GET /v2/<name>/tags/list``): kept briefly, one upstream request at a time.

Tools that list tags (renovate, build scripts picking the newest version) ask the same question
on every run. An answer is kept for ``PROXY_NEGATIVE_TTL`` seconds, the bound the proxy already
gives for how long a tag pushed upstream may stay unseen (its 404 is remembered that long), and
every request asking meanwhile, concurrent ones included, shares one upstream request. Failures
are shared only by the requests that waited on them, never kept.

In memory only, per instance, bounded by bytes: a page is at most 16 MiB, and pages larger than
``LARGEST_KEPT`` are passed on without being kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import cachetools

from proxy.concurrency.singleflight import SingleFlight
from proxy.upstream.client import RegistryClient

MEMORY_BYTES = 32 * 1024 * 1024
LARGEST_KEPT = 4 * 1024 * 1024
ENTRY_OVERHEAD = 200

TagPage = tuple[bytes, str | None]  # the upstream's body and its Link header


class TagLists:
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        # key -> (clock time the answer stops being trusted, the page)
        self._kept: cachetools.LRUCache[tuple[str, ...], tuple[float, TagPage]] = (
            cachetools.LRUCache(MEMORY_BYTES, getsizeof=lambda v: len(v[1][0]) + ENTRY_OVERHEAD)
        )
        self._flights: SingleFlight[TagPage] = SingleFlight()

    async def get(
        self, client: RegistryClient, name: str, n: int | None, last: str | None
    ) -> TagPage:
        """The upstream's page of ``name``'s tags (``n`` and ``last`` as the upstream gets them)."""
        key = (client.host, name, str(n), last or "")
        kept = self._kept.get(key)
        if kept is not None and self.clock() < kept[0]:
            return kept[1]

        async def ask() -> TagPage:
            page = await client.tags_list(name, n, last)
            if self.ttl > 0 and len(page[0]) <= LARGEST_KEPT:
                self._kept[key] = (self.clock() + self.ttl, page)
            return page

        return await self._flights.run(key, ask)
