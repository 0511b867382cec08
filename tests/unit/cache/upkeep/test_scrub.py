"""The background scrub (proxy/cache/upkeep/scrub.py) on its own: its pace, what it judges.

Through the proxy (a flipped byte found and fetched again): tests/http/test_cache_integrity.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from support.storage_data import payload, sha256, write_all

from proxy.cache.upkeep.scrub import Scrubber
from proxy.storage import StorageError
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage

MiB = 1024 * 1024


class FakeTime:
    """A clock that moves only when the scrub sleeps (reading costs no time here)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def cache_with_blobs(root: Path, sizes: list[int]) -> FilesystemStorage:
    storage = FilesystemStorage(root)
    await storage.open()
    for index, size in enumerate(sizes):
        data = payload(size, seed=index)
        writer = await storage.writer(
            f"blobs/sha256/{sha256(data)[:2]}/{sha256(data)}", sha256(data)
        )
        await write_all(writer, data)
        await writer.commit()
    return storage


async def test_a_pass_reads_at_most_the_rate(tmp_path: Path) -> None:
    storage = await cache_with_blobs(tmp_path, [3 * MiB, 2 * MiB, 1024])
    time = FakeTime()
    hashed: list[int] = []
    scrubber = Scrubber(
        FailSafeStorage(storage),
        rate=MiB,
        on_bytes=hashed.append,
        clock=time.clock,
        sleep=time.sleep,
    )
    report = await scrubber.scrub()
    assert report.checked == 3 and report.removed == [] and report.unreadable == 0
    assert report.bytes == sum(hashed) == 5 * MiB + 1024
    # 5 MiB at 1 MiB/s: the pass took (slept) 5 s, give or take the last chunk.
    assert 5.0 <= time.now <= 5.0 + 1024 / MiB + 1e-9
    assert max(time.slept) <= 0.25 + 1e-9  # paced chunk by chunk, not in one burst


class Unreadable(FilesystemStorage):
    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in super().read(key, start, end):
            if chunk:
                raise StorageError(f"the disk said EIO for {key}")
            yield chunk


async def test_what_cannot_be_read_is_never_judged(tmp_path: Path) -> None:
    await cache_with_blobs(tmp_path, [1000])
    storage = Unreadable(tmp_path)
    await storage.open()
    time = FakeTime()
    report = await Scrubber(
        FailSafeStorage(storage, cooldown=0), rate=MiB, clock=time.clock, sleep=time.sleep
    ).scrub()
    assert report.unreadable == 1 and report.removed == []
    assert len([p for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()]) == 1
