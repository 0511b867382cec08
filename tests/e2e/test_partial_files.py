"""A server and the cache commands in separate pid namespaces on one cache (issue 21, item 7).

Two containers of the image sharing a volume: the server downloads a blob while ``cache du`` and
``cache gc`` run in another pid namespace, where the server's pid means nothing (in each
namespace its entry point is pid 1). They used to take the server's partial write for an orphan
and remove it; the commit then failed with a bare FileNotFoundError and the client's download was
cut one byte short. A partial file belongs to whoever holds its lock, whatever the namespace.

The server runs as a real process (``registry-proxy serve`` in ``unshare --pid --fork``), its
upstream the in-process fake hub, whose CDN holds the download half-way until the commands ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest
from support.binaries import require_binaries
from support.fakehub import FakeHub
from support.proxy_process import ProxyProcess, proxy_executable

pytestmark = [pytest.mark.e2e]

MiB = 1024 * 1024
NAMESPACE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child=SIGTERM"]


class NamespacedProxy(ProxyProcess):
    """``registry-proxy serve`` as pid 1 of a pid namespace of its own."""

    def command(self) -> list[str]:
        return [*NAMESPACE, *super().command()]


def downloading(root: Path) -> list[Path]:
    """The blob's partial cache write (``tmp/``) and its spool file, each holding at least half
    of the MiB sent so far (other writes pass through ``tmp/`` too: links, records)."""
    found = []
    for area in (root / "tmp", root / "spool"):
        found += [
            path
            for path in sorted(area.rglob("*"))
            if path.is_file() and path.stat().st_size >= MiB // 2
        ]
    return found


async def until_downloading(root: Path) -> list[Path]:
    for _ in range(1000):  # 10 s
        with contextlib.suppress(FileNotFoundError):
            found = downloading(root)
            if len(found) == 2:
                return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"no partial write and spool file in {root}")


async def test_cache_commands_in_another_pid_namespace_leave_a_download_alone(
    tmp_path: Path,
) -> None:
    require_binaries("unshare")
    data = os.urandom(4 * MiB)
    async with FakeHub(require_auth=False) as hub:
        digest = hub.add_blob(data, repo="library/golang")
        paused = hub.inject_pause_mid_blob(digest, after_bytes=MiB, server="cdn", times=1)
        root = tmp_path / "cache"
        proxy = NamespacedProxy(
            tmp_path / "proxy", hub.url, extra_env={"PROXY_FETCH_PIECES": "1"}, storage=root
        )
        await asyncio.to_thread(proxy.start)
        try:
            async with aiohttp.ClientSession() as session:
                url = f"{proxy.url}/v2/library/golang/blobs/{digest}"
                async with session.get(url) as response:
                    assert response.status == 200
                    await paused.wait_hit(timeout=30)
                    partial, spooled = await until_downloading(root)
                    environment = {
                        k: v for k, v in os.environ.items() if not k.startswith("PROXY_")
                    }
                    environment["PROXY_STORAGE"] = str(root)
                    for command in ("du", "gc"):
                        done = await asyncio.to_thread(
                            subprocess.run,
                            [*NAMESPACE, str(proxy_executable()), "cache", command],
                            env=environment,
                            capture_output=True,
                            text=True,
                            timeout=60,
                            check=False,
                        )
                        assert done.returncode == 0, done.stderr
                    assert partial.exists() and spooled.exists()  # still the server's
                    paused.release()
                    body = await asyncio.wait_for(response.read(), 60)
            assert body == data
            blob = root / "data" / "blobs" / "sha256" / digest[7:9] / digest[7:]
            for _ in range(1000):  # the commit follows the last byte by a moment
                if blob.exists():
                    break
                await asyncio.sleep(0.01)
            assert blob.read_bytes() == data
        finally:
            await asyncio.to_thread(proxy.stop)
