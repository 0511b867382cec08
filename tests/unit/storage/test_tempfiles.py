"""Partial files belong to whoever holds their lock (proxy/storage/tempfiles.py; issue 21, item 6).

Another process, or a process in another pid namespace, cannot be told apart by a pid in a file's
name: ``cache du`` in a second container saw the server's pid as dead and removed its partial
download. A lock the writer holds for the file's life is what tells: a cleaner removes only files
whose lock it can take. (The spool directory's own rules: tests/unit/cache/test_spool.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
