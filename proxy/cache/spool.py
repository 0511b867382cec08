"""The spool: the local directory holding the blobs being downloaded from upstreams right now.

Every client of a download reads its spool file (``BlobFetch``), so no blob is ever held in
memory. Spool files live as long as their download and its slowest reader.

The spool directory (``PROXY_SPOOL_DIR``) holds only what the proxy made: its files live in a
subdirectory of its own, ``registry-proxy-spool/``, with a marker file written when the proxy
created it, and only files in there are ever removed, and only those whose lock nobody holds
(``proxy.storage.tempfiles``: each spool file is locked by its download for its whole life).
A spool directory holding anything else is refused at start-up (``PROXY_SPOOL_DIR=/tmp`` once
emptied /tmp); files that appear beside the subdirectory later are left alone.

On Fargate the spool's disk is the task's ephemeral storage, shared with the image and everything
else. So the spool keeps within its budget (``PROXY_SPOOL_MAX_SIZE``) and leaves the filesystem
``PROXY_SPOOL_MIN_FREE`` free: a new download with no room for it there (``has_room``: checked
before it starts, and again when the upstream announces the blob's size) does not touch the disk
at all and goes through memory instead. A full disk is not an outage: its clients still get the
whole blob, verified, and it is cached as usual where the cache storage has room.

When the disk fills up anyway (other files grew, a size was not announced), a download does not
fail either: its ``SpoolBuffer`` keeps the bytes that no longer fit in memory. Either way
``BlobFetch`` bounds that memory to a window between its slowest reader and the download, and
the event goes to the disk-full alarm (counted, logged once per interval, the evictor woken).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxy.config import Settings
from proxy.storage import StorageError, pagecache
from proxy.storage.filesystem import DISK_FULL_ERRNOS
from proxy.storage.tempfiles import create_owned, remove_abandoned

log = structlog.get_logger(__name__)

#: Called with (where, detail) when a spool write finds the disk full.
DiskFullReport = Callable[[str, str], None]

#: The proxy's own subdirectory of the spool directory, and the marker that says it made it.
SUBDIRECTORY = "registry-proxy-spool"
MARKER = ".registry-proxy"
MARKER_TEXT = (
    b"registry-proxy spool: downloads in progress. Files here are removed when no process holds\n"
    b"their lock; nothing outside this directory is ever removed.\n"
)
#: What may sit beside it: a filesystem's own directory at the root of a mounted volume.
TOLERATED = frozenset({"lost+found"})
#: Spool files of earlier versions, which spooled into the directory itself (``<pid>-<hex>``).
_EARLIER = re.compile(r"[0-9]+-(?:probe-)?[0-9a-f]{32}")


class SpoolRefused(StorageError):
    """The spool directory holds files the proxy did not make; the message is one line."""


@dataclass(frozen=True, slots=True)
class SpoolLocation:
    """The spool directory and the variable that chose it (error messages name it)."""

    variable: str
    path: Path

    def describe(self) -> str:
        return f"{self.variable}={self.path}"

    @property
    def files(self) -> Path:
        """The proxy's own subdirectory, where spool files are."""
        return self.path / SUBDIRECTORY


def spool_location(settings: Settings) -> SpoolLocation:
    """``PROXY_SPOOL_DIR``; else ``spool/`` inside a local cache; else the system's temp dir."""
    if settings.storage.spool_dir is not None:
        return SpoolLocation("PROXY_SPOOL_DIR", settings.storage.spool_dir)
    if settings.storage.location.path is not None:
        return SpoolLocation("PROXY_STORAGE", settings.storage.location.path / "spool")
    return SpoolLocation("PROXY_SPOOL_DIR", Path(tempfile.gettempdir()) / "registry-proxy-spool")


def probe_writable(directory: Path) -> None:
    """Create the directory if needed, then write, sync and remove a small file in it.

    Raises ``OSError`` when any step fails: what a fetch would meet when it spools its first byte
    (a root-owned mount, a read-only or full filesystem).
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Locked like a spool file, so a cleaner in another process leaves it alone.
    probe, fd = create_owned(directory)
    try:
        os.write(fd, b"registry-proxy write probe\n")
        os.fsync(fd)
    finally:
        probe.unlink(missing_ok=True)
        os.close(fd)


def probe_spool(directory: Path, *, refuse_foreign: bool = False) -> Path:
    """Claim the spool directory (``claim``), then probe its subdirectory with a write."""
    files = claim(directory, refuse_foreign=refuse_foreign)
    probe_writable(files)
    return files


def claim(directory: Path, *, refuse_foreign: bool = True) -> Path:
    """The proxy's own subdirectory of ``directory``, made with its marker if need be.

    Raises ``SpoolRefused`` when ``directory`` holds anything the proxy did not make (with
    ``refuse_foreign``: start-up), or when the subdirectory exists without the marker. Spool
    files an earlier version left in the directory itself go (see ``_EARLIER``). OSError when
    the directory cannot be read or written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = directory / SUBDIRECTORY
    foreign: list[str] = []
    earlier: list[Path] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name == SUBDIRECTORY or entry.name in TOLERATED:
                continue
            if _EARLIER.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                earlier.append(Path(entry.path))
            else:
                foreign.append(entry.name)
    if foreign and refuse_foreign:
        raise SpoolRefused(
            f"holds {len(foreign)} entries registry-proxy did not make (e.g. "
            f"{sorted(foreign)[0]!r}): give the spool a directory of its own, empty or not "
            "there yet (the proxy keeps its files in a subdirectory it makes there)"
        )
    if files.is_dir() and not files.is_symlink():
        if not (files / MARKER).is_file():
            raise SpoolRefused(
                f"has a {SUBDIRECTORY}/ that registry-proxy did not make (no {MARKER} in it): "
                "give the spool a directory of its own"
            )
    else:
        files.mkdir(mode=0o700)
        marker_tmp, fd = create_owned(files)
        try:
            os.write(fd, MARKER_TEXT)
            os.replace(marker_tmp, files / MARKER)
        finally:
            marker_tmp.unlink(missing_ok=True)
            os.close(fd)
    for path in earlier:
        # Unlinking a spool file never disturbs a download: it is read and written through its
        # descriptor. These names are the ones earlier versions gave, nothing else matches.
        path.unlink(missing_ok=True)
    return files


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_size: int | None = None,
        min_free: int = 0,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
        on_full: DiskFullReport | None = None,
    ) -> None:
        self.directory = directory
        self.files = directory / SUBDIRECTORY
        self.on_full = on_full
        self.max_size = max_size
        self.min_free = min_free
        self._statvfs = statvfs

    def open(self) -> None:
        """Claim the directory (``SpoolRefused`` if it holds what the proxy did not make) and
        remove the spool files nobody holds any more (a process that was killed)."""
        claim(self.directory)
        removed = remove_abandoned(self.files, keep={MARKER})
        if removed:
            log.info("spool.recovered", removed_files=len(removed), directory=str(self.files))

    def new_buffer(self) -> SpoolBuffer:
        """The buffer of a new download: a new spool file while there is room for one, else
        memory only."""
        return SpoolBuffer(self.files, self.on_full, on_disk=self.has_room(None))

    # --- admission ------------------------------------------------------------------------------

    def room(self) -> int:
        """Bytes one more download may still write (negative: already over)."""
        stats = self._statvfs(self.directory)
        room = stats.f_bavail * stats.f_frsize - self.min_free
        if self.max_size is not None:
            room = min(room, self.max_size - self.used())
        return room

    def used(self) -> int:
        """Disk taken by the spool's files (allocated blocks, so sparse files count as written)."""
        total = 0
        if not self.files.is_dir():
            return 0
        with os.scandir(self.files) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    continue  # a fetch released its spool file meanwhile
        return total

    def has_room(self, size: int | None) -> bool:
        """Whether a download of ``size`` bytes (None: not known yet) fits on the spool disk."""
        room = self.room()
        if room >= (size or 1):
            return True
        wanted = "another download" if size is None else f"a blob of {size} bytes"
        log.warning(
            "spool.full",
            directory=str(self.directory),
            room=room,
            size=size,
            note=f"no room for {wanted}: it streams through memory, cached content is served",
        )
        return False


@dataclass(frozen=True, slots=True)
class SpoolSpan:
    """Bytes ``offset`` to ``offset + count`` of a spool file, opened for one reader to send
    them from (``SpoolBuffer.open_for_sending``)."""

    file: io.FileIO
    offset: int
    count: int


class SpoolGap(StorageError):
    """The bytes asked for were held in memory only, and every reader had passed them."""


class SpoolFailed(StorageError):
    """The spool file could not be written or read (an I/O error other than a full disk).

    A StorageError, not the OSError itself: the route takes an OSError for a client that went
    away, and would leave the others waiting instead of aborting their responses."""


class SpoolBuffer:
    """One download's bytes: in a spool file while the disk takes them, then in memory.

    Bytes ``[0, on_disk)`` are in the file. When a write finds the disk full the file stops
    growing (its unfinished tail is cut off, giving the room back) and every later byte is kept
    in memory, from ``memory_start`` on. ``trim`` drops memory bytes that every reader has
    passed; once it did, the buffer has a gap and a new reader cannot start from byte 0
    (``complete_from_start`` is False): the blob cache starts another download for it.
    """

    def __init__(
        self, directory: Path, on_full: DiskFullReport | None = None, *, on_disk: bool = True
    ) -> None:
        """A new spool file in ``directory``, locked for as long as the buffer lives. ``on_disk``
        False: the spool has no room for it, the bytes go to memory from the start."""
        self.path: Path | None = None
        self._on_full = on_full
        self.on_disk = 0
        self.memory_start: int | None = None  # None while every byte goes to the file
        self._memory = bytearray()
        self._fd: int | None = None
        # The bytes ``read_placed`` last read back from ``on_disk`` on, where they are already:
        # appending that very object writes nothing again.
        self._in_place: bytes | None = None
        if not on_disk:
            self.spill("no room on the spool")
            return
        try:
            self.path, self._fd = create_owned(directory)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self.spill(str(exc))

    @property
    def spilled(self) -> bool:
        return self.memory_start is not None

    @property
    def _name(self) -> str:
        return self.path.name if self.path is not None else "(in memory)"

    @property
    def memory_bytes(self) -> int:
        return len(self._memory)

    @property
    def complete_from_start(self) -> bool:
        """Whether every byte appended so far can still be read."""
        return self.memory_start is None or self.memory_start == self.on_disk

    def readable(self, position: int) -> bool:
        return self.memory_start is None or position < self.on_disk or position >= self.memory_start

    async def append(self, chunk: bytes) -> None:
        in_place, self._in_place = self._in_place, None
        if chunk is in_place and self.memory_start is None:
            self.on_disk += len(chunk)  # the very bytes a piece placed here, read back
            return
        if self.memory_start is None:
            assert self._fd is not None
            try:
                await asyncio.to_thread(_pwrite_all, self._fd, chunk, self.on_disk)
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS:
                    raise SpoolFailed(f"spool {self._name}: {exc}") from exc
                self.spill(str(exc))
            else:
                self.on_disk += len(chunk)
                return
        self._memory += chunk

    def spill(self, detail: str) -> None:
        """Write nothing more to the file: later bytes stay in memory (``detail``: why)."""
        if self.memory_start is not None:
            return
        self.memory_start = self.on_disk
        if self._fd is not None:
            # Part of a failed write may have landed: give those blocks back to the disk.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.on_disk)
        if self._on_full is not None:
            self._on_full("spool", detail)

    async def read(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``position`` (which must be appended already)."""
        if position < self.on_disk:
            assert self._fd is not None
            try:
                return await pagecache.pread(self._fd, min(size, self.on_disk - position), position)
            except OSError as exc:
                raise SpoolFailed(f"spool {self._name}: {exc}") from exc
        if self.memory_start is not None and position >= self.memory_start:
            offset = position - self.memory_start
            return bytes(self._memory[offset : offset + size])
        raise SpoolGap(f"bytes from {position} of {self._name} are no longer held")

    def open_for_sending(self) -> io.FileIO | None:
        """The spool file opened anew, for one reader to send its bytes from (sendfile or a
        copy from the page cache): a file position of its own, and the bytes stay readable
        through it whatever happens to the spool. None when the buffer has no file."""
        if self.path is None or self._fd is None:
            return None
        try:
            return io.FileIO(self.path, "r")
        except OSError as exc:
            raise SpoolFailed(f"spool {self._name}: {exc}") from exc

    async def place(self, offset: int, data: bytes) -> None:
        """Write bytes beyond those appended (a blob fetched in pieces): only into the file.

        Raises ``SpoolFailed`` once the bytes go to memory (the disk filled up): the piece then
        fails and the rest of the blob comes as one stream (``proxy.cache.pieces``).
        """
        if self.memory_start is not None or self._fd is None:
            raise SpoolFailed(f"spool {self._name}: no room on disk for pieces")
        try:
            await asyncio.to_thread(_pwrite_all, self._fd, data, offset)
        except OSError as exc:
            raise SpoolFailed(f"spool {self._name}: {exc}") from exc

    async def read_placed(self, offset: int, size: int) -> bytes:
        """Read back bytes ``place`` wrote. After a spill the file was cut back to what was
        appended, so placed bytes are gone: ``SpoolFailed`` (the download fails, never with
        wrong bytes). Bytes read back from the end of what was appended are not written again
        when they are appended next."""
        if self.memory_start is not None or self._fd is None:
            raise SpoolFailed(f"spool {self._name}: pieces lost when the disk filled up")
        try:
            data = await pagecache.pread(self._fd, size, offset)
        except OSError as exc:
            raise SpoolFailed(f"spool {self._name}: {exc}") from exc
        # The download appends these next (it reads placed bytes back in order): they are where
        # they belong already, and no piece writes them again (each byte lands once).
        self._in_place = data if offset == self.on_disk else None
        return data

    def trim(self, before: int) -> None:
        """Drop the memory bytes before ``before`` (every reader is past them)."""
        if self.memory_start is None or before <= self.memory_start:
            return
        drop = min(before - self.memory_start, len(self._memory))
        del self._memory[:drop]
        self.memory_start += drop

    def close(self) -> None:
        self._memory = bytearray()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with it, after the file
            self._fd = None


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
