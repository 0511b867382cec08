"""Start-up checks: writable spool and cache, memory and disk sizes that fit, in one line."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from support.proxy_process import proxy_executable
from support.settings import settings_with

from proxy.cache.spool import spool_location
from proxy.commands.startup import (
    BASE_MEMORY,
    S3_FETCH_MEMORY,
    StartupError,
    check_memory,
    check_spool_size,
    check_startup,
)
from proxy.config import StorageLocation, load_settings

GiB = 1024**3


def filesystem(total: int) -> os.statvfs_result:
    blocks = total // 4096
    return os.statvfs_result((4096, 4096, blocks, blocks, blocks, 0, 0, 0, 0, 255))


def test_a_writable_setup_passes(tmp_path: Path) -> None:
    settings = settings_with(
        location=StorageLocation(path=tmp_path / "cache"), spool_dir=tmp_path / "spool"
    )
    check_startup(settings, statvfs=lambda _: filesystem(40 * GiB))
    # The spool's own subdirectory, with its marker and nothing else.
    assert [p.name for p in (tmp_path / "spool").iterdir()] == ["registry-proxy-spool"]
    assert [p.name for p in (tmp_path / "spool" / "registry-proxy-spool").iterdir()] == [
        ".registry-proxy"
    ]


def test_an_unwritable_spool_names_the_variable_the_path_and_the_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = settings_with(location=StorageLocation(bucket="b"), spool_dir=blocker / "spool")
    with pytest.raises(StartupError) as info:
        check_startup(settings)
    message = str(info.value)
    assert message.startswith(f"PROXY_SPOOL_DIR={blocker / 'spool'} is not writable by uid ")
    assert message.endswith("Not a directory (ENOTDIR)")


def test_an_unwritable_cache_directory_names_proxy_storage(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = settings_with(location=StorageLocation(path=blocker), spool_dir=tmp_path / "spool")
    expected = f"^PROXY_STORAGE={re.escape(str(blocker))} is not writable"
    with pytest.raises(StartupError, match=expected):
        check_startup(settings)


def test_fetches_must_fit_in_memory() -> None:
    limit = 2048 * 1024**2
    fitting = (limit - BASE_MEMORY) // S3_FETCH_MEMORY
    s3 = StorageLocation(bucket="b")
    check_memory(settings_with(location=s3, memory_limit=limit, max_fetches=fitting))
    with pytest.raises(StartupError) as info:
        check_memory(settings_with(location=s3, memory_limit=limit, max_fetches=64))
    message = str(info.value)
    assert message.startswith(
        "PROXY_MAX_UPSTREAM_FETCHES=64 needs about 3.25 GiB of memory (256 MiB plus 48 MiB per "
        "fetch), more than PROXY_MEMORY_LIMIT=2GiB"
    )
    assert "PROXY_MEMORY_LIMIT=2GiB" in message
    assert f"lower PROXY_MAX_UPSTREAM_FETCHES to {fitting} " in message
    # a local cache writes straight to disk: 64 fetches fit easily
    check_memory(settings_with(memory_limit=limit, max_fetches=64))
    # no limit given: nothing to check
    check_memory(settings_with(location=s3, max_fetches=10_000))


def test_spool_budget_must_fit_on_its_filesystem(tmp_path: Path) -> None:
    settings = settings_with(spool_dir=tmp_path, spool_max_size=35 * GiB, spool_min_free=GiB)
    location = spool_location(settings)
    check_spool_size(settings, location, lambda _: filesystem(40 * GiB))
    with pytest.raises(StartupError) as info:
        check_spool_size(settings, location, lambda _: filesystem(20 * GiB))
    assert str(info.value) == (
        "PROXY_SPOOL_MAX_SIZE=35GiB plus PROXY_SPOOL_MIN_FREE=1GiB do not fit on the 20 GiB "
        f"filesystem of PROXY_SPOOL_DIR={tmp_path}: lower them or give the spool a larger disk"
    )
    unbounded = settings_with(spool_dir=tmp_path, spool_min_free=30 * GiB)
    with pytest.raises(StartupError, match=r"^PROXY_SPOOL_MIN_FREE=30GiB do not fit"):
        check_spool_size(unbounded, location, lambda _: filesystem(20 * GiB))


def test_serve_stops_with_one_line_before_listening(tmp_path: Path) -> None:
    """The command itself: exit code 2, one line on stderr, no traceback, nothing served."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {
        "PATH": "/usr/bin:/bin",
        "PROXY_LISTEN": "127.0.0.1:9",
        "PROXY_STORAGE": str(tmp_path / "cache"),
        "PROXY_SPOOL_DIR": str(blocker / "spool"),
    }
    load_settings(env)  # the settings themselves are valid
    result = subprocess.run(
        [str(proxy_executable()), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"registry-proxy: cannot start: PROXY_SPOOL_DIR={blocker}/spool")
    assert "ENOTDIR" in lines[0]
