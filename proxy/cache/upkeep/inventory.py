"""What the cache holds: every entry with its size, when it was written and when it was last used.

An entry is a blob, a manifest, a tag record, a referrers record or a content link
(``proxy.cache.keys``). Its *own* last use is the latest of the time it was written and the times
any instance recorded serving it (``proxy.cache.upkeep.lastuse``). Its *last use*, the one expiry
and eviction go by, also counts the use of whatever refers to it: a blob is in use while a cached
manifest naming it is served, and a platform manifest while its index is. Docker asks for the
manifest of every image it pulls but only for the layers it does not have yet, so a base image every
build uses keeps its layers even when no client needed them for a month; a new build host will.

Manifests are read once per process to learn what they refer to (``ManifestReferences``): they
are immutable, so what was read stays true.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from proxy.cache.keys import (
    BLOBS,
    LINKS,
    MANIFESTS,
    REFERRERS,
    TAGS,
    blob_key,
    manifest_key,
)
from proxy.cache.upkeep.lastuse import RecordSet, UseRecords
from proxy.registry.manifest import referenced_digests
from proxy.registry.reference import Digest
from proxy.storage.failsafe import FailSafeStorage

_HEX = re.compile(r"[0-9a-f]{64}")
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
#: Manifests read at once when learning references (S3 round trips overlap).
READ_CONCURRENCY = 16


class Kind(StrEnum):
    BLOB = "blob"
    MANIFEST = "manifest"
    TAG = "tag"
    REFERRERS = "referrers"  # a subject's cached referrers list, kept like a tag record
    LINK = "link"  # content known to belong to a repository: lives and dies with the content


@dataclass(slots=True)
class Entry:
    key: str
    kind: Kind
    size: int
    written: float
    used: float  # own last use: the latest of ``written`` and every recorded use
    last_used: float  # ``used``, or later when something referring to it was used since

    @property
    def digest_hex(self) -> str:
        """The digest of a blob or manifest, or the one a link names (its key's last part)."""
        return self.key.rsplit("/", 1)[1]


def kind_of(key: str) -> Kind | None:
    if key.startswith(BLOBS) and _HEX.fullmatch(key.rsplit("/", 1)[1]):
        return Kind.BLOB
    if key.startswith(MANIFESTS) and _HEX.fullmatch(key.rsplit("/", 1)[1]):
        return Kind.MANIFEST
    if key.startswith(TAGS) and "/_tag/" in key:
        return Kind.TAG
    if key.startswith(REFERRERS) and "/_referrers/" in key:
        return Kind.REFERRERS
    if key.startswith(LINKS) and ("/_link/" in key or "/_refs/" in key):
        return Kind.LINK if _HEX.fullmatch(key.rsplit("/", 1)[1]) else None
    return None


def tag_parts(key: str) -> tuple[str, str, str]:
    """(upstream host, repository, tag) of a tag record's key."""
    host, _, rest = key.removeprefix(TAGS).partition("/")
    repository, _, tag = rest.rpartition("/_tag/")
    return host, repository, tag


@dataclass(slots=True)
class Inventory:
    entries: dict[str, Entry] = field(default_factory=dict)
    records: RecordSet = field(default_factory=RecordSet)
    #: Manifests whose references could not be read (their blobs' last use is a lower bound).
    unread: int = 0

    def of_kind(self, kind: Kind) -> list[Entry]:
        return [e for e in self.entries.values() if e.kind is kind]

    @property
    def bytes(self) -> int:
        """Bytes of content (blobs, manifests, tag records): what the size cap counts."""
        return sum(e.size for e in self.entries.values())

    def totals(self) -> dict[Kind, tuple[int, int]]:
        """(entries, bytes) per kind."""
        totals = {kind: (0, 0) for kind in Kind}
        for entry in self.entries.values():
            count, size = totals[entry.kind]
            totals[entry.kind] = (count + 1, size + entry.size)
        return totals


class ManifestReferences:
    """What each cached manifest refers to: (child manifests, blobs), as hex digests."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, hex_digest: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        return self._known.get(hex_digest)

    def learn(self, hex_digest: str, data: bytes, media_type: str | None = None) -> None:
        if Digest.of(data).hex != hex_digest:
            return  # corrupt: refers to nothing we can trust (``cache verify`` removes it)
        children, blobs = referenced_digests(data, media_type)
        self._known[hex_digest] = (_hexes(children), _hexes(blobs))

    async def load(self, storage: FailSafeStorage, manifests: Iterable[Entry]) -> int:
        """Read the manifests not read before; forget those no longer cached. Returns how many
        could not be read."""
        present = {entry.digest_hex: entry.key for entry in manifests}
        for gone in set(self._known) - set(present):
            del self._known[gone]
        missing = [(h, key) for h, key in present.items() if h not in self._known]
        unread = 0
        slots = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(hex_digest: str, key: str) -> None:
            nonlocal unread
            async with slots:
                found = await storage.get(key)
            if found is None:
                unread += 1
            else:
                self.learn(hex_digest, found[0], found[1].content_type)

        await asyncio.gather(*(read(h, key) for h, key in missing))
        return unread


def _hexes(digests: list[str]) -> tuple[str, ...]:
    return tuple(m.group(1) for d in digests if (m := _SHA256.fullmatch(d)))


async def take_inventory(
    storage: FailSafeStorage,
    records: UseRecords,
    references: ManifestReferences,
    *,
    pending: dict[str, float] | None = None,
) -> Inventory:
    """List the cache, read the use records and the manifests' references, and work out every
    entry's last use. Raises StorageError when storage cannot be listed."""
    inventory = Inventory(records=await records.read())
    if pending:
        inventory.records.merge(pending)
    uses = inventory.records.uses
    for prefix in (BLOBS, MANIFESTS, TAGS, REFERRERS, LINKS):
        async for listed in storage.list_objects(prefix):
            kind = kind_of(listed.key)
            if kind is None:
                continue
            used = max(listed.modified, uses.get(listed.key, 0.0))
            inventory.entries[listed.key] = Entry(
                listed.key, kind, listed.size, listed.modified, used, used
            )
    inventory.unread = await references.load(storage, inventory.of_kind(Kind.MANIFEST))
    propagate_use(inventory, references)
    return inventory


# What ManifestReferences.get gives, by position: the manifests an index names, the blobs an
# image manifest names.
NAMED_MANIFESTS, NAMED_BLOBS = 0, 1


def propagate_use(inventory: Inventory, references: ManifestReferences) -> None:
    """Give children the last use of what refers to them: index -> manifest -> blob."""
    manifests = inventory.of_kind(Kind.MANIFEST)
    # Indexes of indexes are rare; a few rounds settle any real nesting.
    for _ in range(3):
        if not _pass_use_down(inventory, references, manifests, NAMED_MANIFESTS, manifest_key):
            break
    _pass_use_down(inventory, references, manifests, NAMED_BLOBS, blob_key)


def _pass_use_down(
    inventory: Inventory,
    references: ManifestReferences,
    manifests: list[Entry],
    which: int,
    key_of: Callable[[Digest], str],
) -> bool:
    """Give what each manifest names (``which``) the manifest's last use where that is later;
    True when any entry changed."""
    changed = False
    for manifest in manifests:
        refs = references.get(manifest.digest_hex)
        for named in refs[which] if refs else ():
            entry = inventory.entries.get(key_of(Digest(named)))
            if entry is not None and entry.last_used < manifest.last_used:
                entry.last_used = manifest.last_used
                changed = True
    return changed
