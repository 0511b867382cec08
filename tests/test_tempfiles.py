"""Partial files belong to whoever holds their lock (proxy/storage/tempfiles.py), and the spool
directory holds only what the proxy made (issue 21, items 6 and 7).

Another process, or a process in another pid namespace, cannot be told apart by a pid in a file's
name: ``cache du`` in a second container saw the server's pid as dead and removed its partial
download. A lock the writer holds for the file's life is what tells: a cleaner removes only files
whose lock it can take, and never anything outside the directories the proxy owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ProxyFactory
from support.fakehub import FakeHub
from support.settings import settings_with
from test_cache_commands import cache_command

from proxy.cache.spool import Spool, SpoolRefused, spool_location
from proxy.commands.startup import StartupError, check_startup
from proxy.config import Settings, StorageLocation
from proxy.http.routes import SERVICES
from proxy.storage.filesystem import FilesystemStorage
from proxy.storage.tempfiles import create_owned, remove_abandoned

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from proxy.storage.tempfiles import create_owned
    path, fd = create_owned(Path(sys.argv[1]))
    print(path, flush=True)
    sys.stdin.read()  # hold it until told to go
    """
)


class Holder:
    """Another process holding a partial file of its own in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.path = Path(self.process.stdout.readline().strip())

    def exit(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def test_a_file_another_process_holds_is_left_alone_until_it_lets_go(tmp_path: Path) -> None:
    holder = Holder(tmp_path)
    try:
        mine, fd = create_owned(tmp_path)
        assert remove_abandoned(tmp_path) == []  # neither ours in use, nor the other's
        assert holder.path.exists() and mine.exists()
        os.unlink(mine)
        os.close(fd)
    finally:
        holder.exit()
    # Its process is gone (killed, or in another pid namespace: it makes no difference).
    assert remove_abandoned(tmp_path, dry_run=True) == [holder.path]
    assert holder.path.exists()
    assert remove_abandoned(tmp_path) == [holder.path]
    assert not holder.path.exists()


def test_a_cleaner_takes_only_plain_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inside").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "inside")
    (tmp_path / "left").write_bytes(b"an abandoned partial write")
    assert remove_abandoned(tmp_path, keep={"left"}) == []
    assert remove_abandoned(tmp_path) == [tmp_path / "left"]
    assert (tmp_path / "sub" / "inside").exists() and (tmp_path / "link").is_symlink()


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


async def test_a_partial_write_that_vanishes_is_a_storage_failure(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path)
    await storage.open()
    data = b"a blob whose partial file is removed from under its writer"
    from proxy.registry.reference import Digest
    from proxy.storage import StorageError

    digest = Digest.of(data)
    writer = await storage.writer(f"blobs/sha256/{digest.hex[:2]}/{digest.hex}", digest.hex)
    await writer.write(data)
    for leftover in (tmp_path / "tmp").iterdir():
        leftover.unlink()
    with pytest.raises(StorageError, match="vanished"):
        await writer.commit()


def _partial_writes(tmp: Path) -> list[Path]:
    """Files in tmp/ holding half of the MiB sent before the pause: the blob's partial write
    (link and last-use record writes pass through tmp/ too, and may be there at the moment)."""
    found = []
    for path in tmp.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size >= 512 * 1024:
                found.append(path)
    return found


async def _until_partial_write(tmp: Path) -> list[Path]:
    for _ in range(1000):  # 10 s
        found = _partial_writes(tmp)
        if found:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"no partial write of the blob in {tmp}")


async def test_a_download_whose_partial_write_vanishes_completes_and_caches_nothing(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Whatever removed it (a cleaner that could not see the writer's lock, an operator), the
    client's download completes from the spool; the blob is simply not cached, and the storage
    failure is counted like any other."""
    data = os.urandom(2 * 1024 * 1024)
    digest = fakehub.add_blob(data, repo="library/golang")
    client = await make_proxy(fakehub, fetch_pieces=1)
    services = client.app[SERVICES]
    root = services.settings.storage.location.path
    assert root is not None
    paused = fakehub.inject_pause_mid_blob(digest, server="cdn", times=1)
    async with client.get(f"/v2/library/golang/blobs/{digest}") as response:
        assert response.status == 200
        await paused.wait_hit()
        partials = await _until_partial_write(root / "tmp")
        assert len(partials) == 1
        partials[0].unlink()
        paused.release()
        assert await response.read() == data
    assert not (root / "data" / "blobs" / "sha256" / digest[7:9] / digest[7:]).exists()
    assert services.storage.errors == 1
