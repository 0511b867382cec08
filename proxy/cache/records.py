"""Records the caches keep in storage and in memory: a tag's digest, a referrers list.

Every instance confirms records with the upstream and writes them to storage, where the others
read them; a record says when it was confirmed (``checked_at``, wall-clock seconds), and of two
records for one key the one confirmed later wins, whichever instance wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Protocol, TypeVar

from proxy.storage.failsafe import FailSafeStorage


class CheckedRecord(Protocol):
    @property
    def checked_at(self) -> float: ...


R = TypeVar("R", bound=CheckedRecord)


async def load_newer(
    storage: FailSafeStorage,
    key: str,
    parse: Callable[[bytes], R | None],
    known: MutableMapping[str, R],
) -> None:
    """Read the record at ``key`` from storage and keep it in ``known`` if it was confirmed later
    than the one there (another instance may have confirmed it since this one last looked). A
    missing, unreadable or unparsable record changes nothing."""
    found = await storage.get(key)
    record = parse(found[0]) if found else None
    current = known.get(key)
    if record is not None and (current is None or record.checked_at > current.checked_at):
        known[key] = record
