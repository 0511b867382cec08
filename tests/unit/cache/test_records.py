"""proxy/cache/records.py: of the record in memory and the one in storage, the one confirmed later
wins, whichever instance wrote it; a missing or unparsable record changes nothing."""

from __future__ import annotations

from pathlib import Path

from proxy.cache.manifests import TagRecord
from proxy.cache.records import load_newer
from proxy.registry.reference import Digest
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage

KEY = "tags/docker.io/library/golang/_tag/1.22"
MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def record(name: str, checked_at: float) -> TagRecord:
    return TagRecord(Digest.of(name.encode()), MEDIA_TYPE, checked_at)


async def test_the_later_confirmation_wins(tmp_path: Path) -> None:
    inner = FilesystemStorage(tmp_path)
    await inner.open()
    storage = FailSafeStorage(inner, cooldown=0)
    known: dict[str, TagRecord] = {}
    await load_newer(storage, KEY, TagRecord.from_json, known)
    assert known == {}, "nothing stored: nothing known"

    await storage.put(KEY, record("stored", 100.0).to_json(), overwrite=True)
    await load_newer(storage, KEY, TagRecord.from_json, known)
    assert known[KEY] == record("stored", 100.0)

    known[KEY] = record("confirmed here since", 200.0)
    await load_newer(storage, KEY, TagRecord.from_json, known)
    assert known[KEY] == record("confirmed here since", 200.0), "an older record stays unread"

    await storage.put(KEY, record("another instance's", 300.0).to_json(), overwrite=True)
    await load_newer(storage, KEY, TagRecord.from_json, known)
    assert known[KEY] == record("another instance's", 300.0)

    await storage.put(KEY, b"not a record", overwrite=True)
    await load_newer(storage, KEY, TagRecord.from_json, known)
    assert known[KEY] == record("another instance's", 300.0)
