"""A small tmpfs mounted by a test, to fill a disk for real (the disk-full tests).

Mounting needs root (or CAP_SYS_ADMIN in a container). Where the mount is refused the test is
skipped with the reason; with ``PROXY_TEST_REQUIRE_BINARIES=1`` (CI, ``.ci/run``) it fails
instead, exactly as a missing program does (``support.binaries``).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.binaries import REQUIRE_ENV, binaries_required, require_binaries

MOUNT_TIMEOUT = 30.0


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` on ``path`` (created) for the block; unmount after."""
    programs = require_binaries("mount", "umount")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            programs["mount"],
            "-t",
            "tmpfs",
            "-o",
            f"size={size_bytes},mode=0700",
            "tmpfs",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=MOUNT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}"
        if binaries_required():
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1 makes this a failure)", pytrace=False)
        pytest.skip(reason)
    try:
        yield path
    finally:
        # Lazy: a file something still holds open must not keep the mount (or the test) alive.
        subprocess.run(
            [programs["umount"], "-l", str(path)],
            capture_output=True,
            timeout=MOUNT_TIMEOUT,
            check=False,
        )
