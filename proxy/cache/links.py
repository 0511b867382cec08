"""Which repositories cached content belongs to.

Blobs and manifests are stored once per digest, whatever repository they were fetched for. A
registry still serves content only under the repositories that hold it (distribution keeps a link
per repository and digest), and so must a cache: otherwise a blob fetched with an extra upstream's
credentials for a private repository would be readable under any public name, and repository
rules would not hold for blobs.

Content may be served under a repository once the upstream said that repository holds it:

- it was fetched from the upstream for that repository (a GET the upstream answered for it);
- a tag record of that repository names it (the upstream said the tag names that manifest);
- the upstream confirmed it with a HEAD on that repository (free on Docker Hub), asked the first
  time the content is wanted there and remembered for every instance.

What a manifest lists never grants anything by itself. Registries ignore fields they do not know,
and not all of them check that a pushed manifest's references are in its repository: anyone who
can push a manifest upstream could list other repositories' digests in it (issue 21). So the
layers of alpine already cached through golang cost one HEAD on library/alpine per layer, once
for the whole fleet, and nothing after.

Each fact is an empty object in storage, so every instance on one bucket shares it:

    links/<upstream>/<repository>/_link/<hex>   the content may be served under the repository

Known facts are kept in memory in front of storage: on the warm path a check is one dictionary
lookup; a cold instance pays one storage ``stat`` per repository and digest, and an upstream HEAD
only for content never linked to that repository. An upstream 404 is remembered like other 404s
(the negative TTL), and concurrent checks share one HEAD.

A link is never removed while its content is cached: content that belonged to a repository stays
servable under it, as a pulled image stays pullable from distribution's own proxy. (``_refs``
markers, written by earlier versions for every reference of a manifest, are garbage now: sweeps
remove them.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import cachetools

from proxy.cache.keys import link_key
from proxy.cache.negative import NegativeCache
from proxy.concurrency.singleflight import SingleFlight
from proxy.registry.reference import Digest
from proxy.storage.failsafe import FailSafeStorage
from proxy.upstream.errors import UpstreamNotFound

# Keys of facts known true. ~150 bytes each: 100 000 entries are ~15 MB.
MEMORY_ENTRIES = 100_000
# Links written at once for one manifest (a big index or a manifest with many layers).
WRITE_BATCH = 32


class ContentLinks:
    def __init__(self, storage: FailSafeStorage, *, negative_ttl: float = 0.0) -> None:
        self._storage = storage
        # An upstream 404 for content under a repository, remembered like other 404s.
        self._negative = NegativeCache(negative_ttl)
        self._known: cachetools.LRUCache[str, bool] = cachetools.LRUCache(MEMORY_ENTRIES)
        self._confirmations: SingleFlight[None] = SingleFlight()

    def known(self, upstream_host: str, name: str, digest: Digest) -> bool:
        """Whether memory already knows the content belongs to the repository (no I/O)."""
        return link_key(upstream_host, name, digest) in self._known

    async def is_linked(self, upstream_host: str, name: str, digest: Digest) -> bool:
        key = link_key(upstream_host, name, digest)
        if key in self._known:
            return True
        if await self._storage.stat(key) is None:
            return False
        self._known[key] = True
        return True

    async def admit(
        self,
        upstream_host: str,
        name: str,
        digest: Digest,
        confirm: Callable[[], Awaitable[object]],
    ) -> None:
        """Return when cached content may be served under ``name``; raise UpstreamNotFound if not.

        ``confirm`` asks the upstream (a HEAD on the repository); it runs once for concurrent
        callers, and a 404 is remembered for the negative TTL. Other upstream failures pass on:
        nothing proves the content belongs there.
        """
        if await self.is_linked(upstream_host, name, digest):
            return
        key = link_key(upstream_host, name, digest)
        if key in self._negative:
            raise UpstreamNotFound(
                f"{name} does not hold {digest} upstream (answer remembered)", status=404
            )

        async def confirmed() -> None:
            # A check that ended while this caller looked in storage has answered already.
            if key in self._known:
                return
            if key in self._negative:
                raise UpstreamNotFound(
                    f"{name} does not hold {digest} upstream (answer remembered)", status=404
                )
            try:
                await confirm()
            except UpstreamNotFound:
                self._negative.remember(key)
                raise
            await self.link(upstream_host, name, [digest])

        await self._confirmations.run(key, confirmed)

    async def link(self, upstream_host: str, name: str, digests: Iterable[Digest]) -> bool:
        """Record that the content belongs to ``name``; False if some link could not be stored.

        Memory learns the facts either way (they are true whatever storage did): a failing
        storage costs other instances an upstream HEAD, not this one.
        """
        keys = [
            key
            for key in dict.fromkeys(link_key(upstream_host, name, d) for d in digests)
            if key not in self._known
        ]
        stored = True
        for start in range(0, len(keys), WRITE_BATCH):
            batch = keys[start : start + WRITE_BATCH]
            results = await asyncio.gather(
                *(self._storage.put(key, b"", overwrite=True) for key in batch)
            )
            stored = stored and all(results)
            for key in batch:
                self._known[key] = True
        return stored
