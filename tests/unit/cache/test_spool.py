"""The spool (proxy/cache/spool.py): its location, the write probe, the room it leaves, a download
whose spool disk fills up (``SpoolBuffer``, with proxy/cache/inflight.py's readers), and a spool
directory that holds only what the proxy made (issue 21, item 7).

The disk is made "full" after a number of bytes by replacing the spool's write with one that
raises ENOSPC; the real thing, on a small tmpfs, is tests/http/test_disk_full.py. Through the app
(a fetch with no room goes through memory): tests/http/test_spool.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory, cache_command
from support.settings import settings_with

from proxy.cache import inflight, spool
from proxy.cache.inflight import BlobFetch
from proxy.cache.spool import (
    Spool,
    SpoolBuffer,
    SpoolGap,
    SpoolRefused,
    probe_writable,
    spool_location,
)
from proxy.commands.startup import StartupError, check_startup
from proxy.config import Settings, StorageLocation
from proxy.http.routes import SERVICES
from proxy.storage import StorageError

KiB = 1024
MiB = 1024 * KiB


def fake_statvfs(free: int, total: int = 100 * 1024**3) -> os.statvfs_result:
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
    return os.statvfs_result(
        (4096, 4096, total // 4096, free // 4096, free // 4096, 0, 0, 0, 0, 255)
    )


def test_location_names_the_variable_that_chose_it(tmp_path: Path) -> None:
    explicit = settings_with(spool_dir=tmp_path / "spool")
    assert spool_location(explicit).describe() == f"PROXY_SPOOL_DIR={tmp_path / 'spool'}"
    local = settings_with(location=StorageLocation(path=tmp_path / "cache"))
    assert spool_location(local).variable == "PROXY_STORAGE"
    assert spool_location(local).path == tmp_path / "cache" / "spool"
    s3 = settings_with(location=StorageLocation(bucket="b"))
    assert spool_location(s3).variable == "PROXY_SPOOL_DIR"
    assert spool_location(s3).path.name == "registry-proxy-spool"


def test_probe_creates_the_directory_and_leaves_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "spool"
    probe_writable(directory)
    assert directory.is_dir()
    assert list(directory.iterdir()) == []


def test_probe_fails_where_a_file_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with pytest.raises(OSError):
        probe_writable(blocker / "spool")
    with pytest.raises(OSError):
        probe_writable(blocker)


def test_room_keeps_the_minimum_free(tmp_path: Path) -> None:
    spool = Spool(
        tmp_path, max_size=None, min_free=1024 * MiB, statvfs=lambda _: fake_statvfs(1030 * MiB)
    )
    assert spool.has_room(None)
    assert spool.has_room(6 * MiB)
    assert not spool.has_room(7 * MiB)
    full = Spool(
        tmp_path, max_size=None, min_free=1024 * MiB, statvfs=lambda _: fake_statvfs(1024 * MiB)
    )
    assert not full.has_room(None)
    reports: list[tuple[str, str]] = []
    full.on_full = lambda where, detail: reports.append((where, detail))
    buffer = full.new_buffer()  # no room: memory only, and the disk-full alarm hears of it
    assert buffer.spilled and buffer.on_disk == 0
    assert buffer.path is None  # no file was made
    assert reports == [("spool", "no room on the spool")]
    buffer.close()


def test_room_keeps_the_spool_within_its_budget(tmp_path: Path) -> None:
    spool = Spool(
        tmp_path, max_size=3 * MiB, min_free=0, statvfs=lambda _: fake_statvfs(50 * 1024**3)
    )
    spool.open()
    (spool.files / "downloading").write_bytes(os.urandom(2 * MiB))
    assert 2 * MiB <= spool.used() <= 2 * MiB + 64 * 1024
    assert spool.has_room(MiB // 2)
    assert not spool.has_room(2 * MiB)
    (spool.files / "downloading").unlink()
    assert spool.has_room(2 * MiB)


@pytest.fixture
def disk_room(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``disk_room[0]``: bytes the spool disk takes before ENOSPC (it then writes a part)."""
    room = [1 * MiB]
    original = spool._pwrite_all

    def write(fd: int, data: bytes, offset: int) -> None:
        if offset + len(data) > room[0]:
            fits = max(0, room[0] - offset)
            original(fd, data[:fits], offset)  # a partial write lands, as on a real disk
            raise OSError(errno.ENOSPC, "No space left on device")
        original(fd, data, offset)

    monkeypatch.setattr(spool, "_pwrite_all", write)
    yield room


def blob(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def pieces(data: bytes, size: int = 64 * KiB) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def test_buffer_spills_to_memory_and_gives_the_disk_back(
    tmp_path: Path, disk_room: list[int]
) -> None:
    reports: list[tuple[str, str]] = []
    data = blob(3 * MiB)
    buffer = SpoolBuffer(tmp_path, lambda where, detail: reports.append((where, detail)))
    assert buffer.path is not None
    for chunk in pieces(data):
        await buffer.append(chunk)
    assert buffer.spilled and buffer.on_disk == 1 * MiB
    assert buffer.path.stat().st_size == 1 * MiB  # the partial write was cut off
    assert buffer.memory_bytes == 2 * MiB
    assert [where for where, _ in reports] == ["spool"]  # reported once, when it happened
    assert await buffer.read(0, 10) == data[:10]
    assert await buffer.read(MiB - 5, 100) == data[MiB - 5 : MiB]  # a read stops at the file's end
    assert await buffer.read(MiB, 100) == data[MiB : MiB + 100]
    assert buffer.memory_start == buffer.on_disk  # nothing let go yet: complete from the start

    buffer.trim(2 * MiB)
    assert buffer.memory_bytes == 1 * MiB
    assert not buffer.complete_from_start
    assert buffer.readable(0) and not buffer.readable(MiB + 1) and buffer.readable(2 * MiB)
    with pytest.raises(SpoolGap):
        await buffer.read(MiB + 1, 10)
    assert await buffer.read(2 * MiB, 10) == data[2 * MiB : 2 * MiB + 10]
    buffer.close()
    assert os.listdir(tmp_path) == []


async def test_no_room_even_for_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "open", full)  # (only the spool file is opened meanwhile)
    buffer = SpoolBuffer(tmp_path, None)
    await buffer.append(b"abc")
    assert buffer.spilled and buffer.on_disk == 0
    assert await buffer.read(0, 10) == b"abc"
    buffer.close()


async def pump(fetch: BlobFetch, data: bytes) -> None:
    await fetch.started(len(data))
    for chunk in pieces(data):
        await fetch.append(chunk)
    await fetch.finish(None)


async def collect(stream: AsyncIterator[bytes], pace: asyncio.Event | None = None) -> bytes:
    received = bytearray()
    async for chunk in stream:
        received += chunk
        if pace is not None:
            await pace.wait()
    return bytes(received)


async def test_readers_get_whole_blob_while_memory_stays_in_a_window(
    tmp_path: Path, disk_room: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inflight, "MEMORY_WINDOW", 512 * KiB)
    data = blob(6 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, fetch.memory_bytes)
            await asyncio.sleep(0)

    readers = [fetch.reader() for _ in range(4)]
    watcher = asyncio.create_task(watch())
    results = await asyncio.wait_for(
        asyncio.gather(pump(fetch, data), *(collect(r.read(0, None)) for r in readers)), 30
    )
    watcher.cancel()
    assert all(result == data for result in results[1:])
    # The download waited for its readers: memory held at most the window plus one chunk.
    assert 0 < peak <= 512 * KiB + 64 * KiB


async def test_a_late_reader_cannot_start_from_a_released_start(
    tmp_path: Path, disk_room: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inflight, "MEMORY_WINDOW", 256 * KiB)
    data = blob(3 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    first = fetch.reader()
    reading = asyncio.create_task(collect(first.read(0, None)))
    await asyncio.wait_for(pump(fetch, data), 30)
    assert await reading == data
    assert not fetch.complete_from_start  # the blob cache starts another download instead


async def test_a_stalled_reader_is_cut_off_and_the_others_finish(
    tmp_path: Path, disk_room: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inflight, "MEMORY_WINDOW", 256 * KiB)
    monkeypatch.setattr(inflight, "STALL_TIMEOUT", 0.2)
    data = blob(4 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    never = asyncio.Event()  # the stalled client never reads on
    stalled = asyncio.create_task(collect(fetch.reader().read(0, None), pace=never))
    healthy = asyncio.create_task(collect(fetch.reader().read(0, None)))
    await asyncio.wait_for(pump(fetch, data), 30)
    assert await asyncio.wait_for(healthy, 30) == data
    never.set()
    with pytest.raises(StorageError, match="fell behind"):
        await asyncio.wait_for(stalled, 30)


async def test_unused_reservation_is_released(tmp_path: Path, disk_room: list[int]) -> None:
    data = blob(2 * MiB)
    fetch = BlobFetch("sha256:x", SpoolBuffer(tmp_path, None))
    reservation = fetch.reader()
    reservation.close()  # (what the finalizer of an unread BlobContent does)
    await asyncio.wait_for(pump(fetch, data), 30)  # nothing holds the download back
    assert fetch.memory_bytes == 0


async def test_other_spool_errors_fail_the_download_as_storage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An OSError would read as "the client went away" at the route, which then leaves the other
    # clients waiting instead of aborting them.
    def broken(fd: int, data: bytes, offset: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool, "_pwrite_all", broken)
    buffer = SpoolBuffer(tmp_path, None)
    with pytest.raises(StorageError, match="Input/output error"):
        await buffer.append(b"abc")
    assert not buffer.spilled
    buffer.close()


def settings_with_spool(tmp_path: Path, spool: Path) -> Settings:
    return settings_with(location=StorageLocation(path=tmp_path / "cache"), spool_dir=spool)


def test_a_spool_directory_with_foreign_files_is_refused_at_start_up(tmp_path: Path) -> None:
    """PROXY_SPOOL_DIR=/tmp wiped /tmp: now it is refused, in one line, and nothing touched."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    (shared / "report.pdf").write_bytes(b"someone's file")
    (shared / "12345-notes").write_bytes(b"named like a spool file of a pid that is gone")
    with pytest.raises(StartupError) as info:
        check_startup(settings_with_spool(tmp_path, shared))
    message = str(info.value)
    assert message.startswith(f"PROXY_SPOOL_DIR={shared} holds 2 entries registry-proxy did not")
    assert "'12345-notes'" in message and "\n" not in message
    with pytest.raises(SpoolRefused):
        Spool(shared).open()
    assert sorted(p.name for p in shared.iterdir()) == ["12345-notes", "report.pdf"]


async def test_the_proxy_never_removes_a_foreign_file_from_the_spool_directory(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Files that appear in PROXY_SPOOL_DIR after start-up are not the proxy's either: neither
    the server nor ``cache gc`` removes them."""
    spool = tmp_path / "spool"
    client = await make_proxy(fakehub, spool_dir=spool)
    settings = client.app[SERVICES].settings
    assert sorted(p.name for p in spool.iterdir()) == ["registry-proxy-spool"]
    assert (spool / "registry-proxy-spool" / ".registry-proxy").is_file()
    (spool / "9999999-dead").write_bytes(b"not the proxy's")
    (spool / "registry-proxy-spool" / "abandoned").write_bytes(b"a partial nobody holds")
    status, text = await cache_command(settings, "gc")
    assert status == 0
    assert (spool / "9999999-dead").exists()
    assert not (spool / "registry-proxy-spool" / "abandoned").exists()
    assert "orphaned temporary file" in text
    assert (spool / "registry-proxy-spool" / ".registry-proxy").is_file()


def test_spool_files_of_an_earlier_version_are_taken_over(tmp_path: Path) -> None:
    """Earlier versions spooled into the directory itself, as ``<pid>-<32 hex>``: such files do
    not make it foreign, and go (unlinking a spool file never disturbs a download: it is read
    and written through its descriptor)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    old = spool / f"{os.getpid()}-{'a' * 32}"
    old.write_bytes(b"x")
    (spool / f"7-probe-{'b' * 32}").write_bytes(b"")
    (spool / "lost+found").mkdir()  # a filesystem's own, at the root of a mounted volume
    check_startup(
        settings_with(settings_with_spool(tmp_path, spool), spool_min_free=0),
        statvfs=lambda _: os.statvfs(tmp_path),
    )
    assert sorted(p.name for p in spool.iterdir()) == ["lost+found", "registry-proxy-spool"]
    assert spool_location(settings_with_spool(tmp_path, spool)).path == spool


async def test_bytes_read_back_from_their_place_are_appended_without_writing_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob fetched in pieces: the download reads placed bytes back, hashes them and appends
    them. They are in the file already, so only that very read-back object is appended without
    a write; any other bytes appended there are written (what readers see is what was hashed)."""
    writes: list[tuple[int, bytes]] = []
    original = spool._pwrite_all

    def counted(fd: int, data: bytes, offset: int) -> None:
        writes.append((offset, bytes(data)))
        original(fd, data, offset)

    monkeypatch.setattr(spool, "_pwrite_all", counted)
    buffer = SpoolBuffer(tmp_path)
    await buffer.append(b"abc")
    await buffer.place(3, b"def")
    await buffer.place(6, b"ghi")
    placed = await buffer.read_placed(3, 3)
    await buffer.append(placed)
    assert writes == [(0, b"abc"), (3, b"def"), (6, b"ghi")]  # nothing written again
    await buffer.read_placed(6, 3)
    await buffer.append(b"GHI")  # equal length, other bytes: written where they go
    assert writes[-1] == (6, b"GHI")
    assert await buffer.read(0, 9) == b"abcdefGHI"
    buffer.close()
