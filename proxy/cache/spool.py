"""The spool: the local directory holding the blobs being downloaded from upstreams right now.

Every client of a download reads its spool file (``BlobFetch``), so no blob is ever held in
memory. Spool files live as long as their download and its slowest reader; the ones a killed
process left behind are removed when the next one opens the spool.

On Fargate the spool's disk is the task's ephemeral storage, shared with the image and everything
else, and a full disk would fail every fetch in progress at once. So a new fetch is admitted only
while the spool keeps within its budget (``PROXY_SPOOL_MAX_SIZE``) and the filesystem keeps
``PROXY_SPOOL_MIN_FREE`` free; otherwise the client gets ``503 UNAVAILABLE`` with
``Retry-After``, and cached content is served as before. A fetch is checked twice: before it
starts (is there any room?) and when the upstream announces the blob's size (is there room for
that many bytes?). ``PROXY_SPOOL_MIN_FREE`` is also the margin for fetches admitted before their
size was known.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxy.config import Settings
from proxy.errors import RegistryError
from proxy.tempfiles import remove_orphans, temp_name

log = structlog.get_logger(__name__)

# How long a client refused for lack of spool room is told to wait: long enough for the fetches
# in progress to finish and free their spool files.
RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True, slots=True)
class SpoolLocation:
    """The spool directory and the variable that chose it (error messages name it)."""

    variable: str
    path: Path

    def describe(self) -> str:
        return f"{self.variable}={self.path}"


def spool_location(settings: Settings) -> SpoolLocation:
    """``PROXY_SPOOL_DIR``; else ``spool/`` inside a local cache; else the system's temp dir."""
    if settings.spool_dir is not None:
        return SpoolLocation("PROXY_SPOOL_DIR", settings.spool_dir)
    if settings.storage.path is not None:
        return SpoolLocation("PROXY_STORAGE", settings.storage.path / "spool")
    return SpoolLocation("PROXY_SPOOL_DIR", Path(tempfile.gettempdir()) / "registry-proxy-spool")


def probe_writable(directory: Path) -> None:
    """Create the directory if needed, then write, sync and remove a small file in it.

    Raises ``OSError`` when any step fails: what a fetch would meet when it spools its first byte
    (a root-owned mount, a read-only or full filesystem).
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Named like a spool file (pid first), so orphan clean-up by another process leaves it alone.
    probe = directory / f"{os.getpid()}-probe-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, b"registry-proxy write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        probe.unlink(missing_ok=True)


class SpoolFull(RegistryError):
    """No room on the spool for another download: 503 with Retry-After, nothing is fetched."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "UNAVAILABLE",
            detail=detail,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_size: int | None = None,
        min_free: int = 0,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.directory = directory
        self.max_size = max_size
        self.min_free = min_free
        self._statvfs = statvfs

    def open(self) -> None:
        """Create the directory and remove files abandoned by processes that are gone."""
        self.directory.mkdir(parents=True, exist_ok=True)
        removed = remove_orphans(self.directory)
        if removed:
            log.info("spool.recovered", removed_files=removed, directory=str(self.directory))

    def new_path(self) -> Path:
        """A path for a new spool file (the caller creates it exclusively)."""
        return self.directory / temp_name()

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
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    continue  # a fetch released its spool file meanwhile
        return total

    def admit(self, size: int | None) -> None:
        """Raise ``SpoolFull`` unless a download of ``size`` bytes (None: not known yet) fits."""
        room = self.room()
        if room >= (size or 1):
            return
        wanted = "another download" if size is None else f"a blob of {size} bytes"
        log.warning("spool.full", directory=str(self.directory), room=room, size=size)
        raise SpoolFull(
            f"no room on the spool for {wanted} (at most {max(room, 0)} bytes); "
            "cached content is still served"
        )
