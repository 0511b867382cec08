"""SIGTERM drains: stop accepting, finish transfers within the grace period, abort the rest."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from support.fakehub import FakeHub
from support.proxy_process import ProxyProcess

LAYER = bytes(range(256)) * 4096 * 4  # 4 MiB


def cache_files(root: Path, area: str) -> list[Path]:
    """The files of one area (not the spool's marker, which stays)."""
    return [p for p in (root / area).rglob("*") if p.is_file() and p.name != ".registry-proxy"]


async def wait_exit(proxy: ProxyProcess, seconds: float) -> int:
    """Wait for the process to exit by itself (no second signal) and return its exit code."""
    process = proxy.process
    assert process is not None
    return await asyncio.to_thread(process.wait, seconds)


async def start_transfer(
    session: aiohttp.ClientSession, proxy: ProxyProcess, digest: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    response = await session.get(f"{proxy.url}/v2/library/golang/blobs/{digest}")
    assert response.status == 200
    first = await response.content.readexactly(64 * 1024)
    return response, first


async def test_sigterm_lets_a_transfer_finish(fakehub: FakeHub, tmp_path: Path) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    gate = fakehub.inject(
        "pause_mid_blob", path_contains=digest, after_bytes=1024 * 1024, server="cdn"
    )
    proxy = ProxyProcess(tmp_path, fakehub.url, extra_env={"PROXY_SHUTDOWN_GRACE": "20"})
    await asyncio.to_thread(proxy.start)
    try:
        async with aiohttp.ClientSession() as session:
            response, first = await start_transfer(session, proxy, digest)
            assert proxy.pid is not None
            proxy.send_signal(signal.SIGTERM)
            # New connections are refused while the transfer in progress goes on.
            for _ in range(200):
                if proxy.healthz(timeout=1) is None:
                    break
                await asyncio.sleep(0.02)
            assert proxy.healthz(timeout=1) is None
            gate.release()
            rest = await asyncio.wait_for(response.read(), timeout=20)
            assert first + rest == LAYER
        assert await wait_exit(proxy, 20) == 0
    finally:
        gate.release()
        await asyncio.to_thread(proxy.stop)
    # The blob finished during the drain, so it is in the cache; nothing temporary is left.
    [stored] = cache_files(tmp_path / "cache", "data/blobs")
    assert stored.read_bytes() == LAYER
    assert cache_files(tmp_path / "cache", "tmp") == []


async def test_sigterm_aborts_what_cannot_finish(fakehub: FakeHub, tmp_path: Path) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    gate = fakehub.inject(
        "pause_mid_blob", path_contains=digest, after_bytes=1024 * 1024, server="cdn"
    )
    proxy = ProxyProcess(tmp_path, fakehub.url, extra_env={"PROXY_SHUTDOWN_GRACE": "0.5"})
    await asyncio.to_thread(proxy.start)
    try:
        async with aiohttp.ClientSession() as session:
            response, _ = await start_transfer(session, proxy, digest)
            proxy.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), timeout=20)
        assert await wait_exit(proxy, 20) == 0
    finally:
        gate.release()
        await asyncio.to_thread(proxy.stop)
    assert cache_files(tmp_path / "cache", "data/blobs") == []
    assert cache_files(tmp_path / "cache", "tmp") == []
    assert cache_files(tmp_path / "cache", "spool") == []
