"""Temporary files named after the process that owns them: ``<pid>-<random>``.

A process killed mid-download leaves its temporary files behind (partial cache writes, spool
files). The pid in the name lets a later process tell abandoned files (their process is gone)
from those of a live process sharing the directory, and remove only the former.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def temp_name() -> str:
    """A fresh name for a temporary file of this process."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def orphans(directory: Path, *, running: bool = False) -> list[Path]:
    """The temporary files in ``directory`` whose process no longer runs.

    At start-up (``running`` False) files named with our own pid are orphans too: a previous
    process had it (a container's entry point is pid 1 every time). Once this process runs
    (``running`` True) they are its own files in use.
    """
    found = []
    for entry in directory.iterdir():
        pid_text = entry.name.partition("-")[0]
        if pid_text.isdigit():
            pid = int(pid_text)
            if pid == os.getpid() and running:
                continue
            if pid != os.getpid() and _pid_alive(pid):
                continue
        found.append(entry)
    return found


def remove_orphans(directory: Path, *, running: bool = False) -> int:
    """Delete the temporary files in ``directory`` whose process no longer runs."""
    removed = 0
    for entry in orphans(directory, running=running):
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
