"""Readiness (``GET /readyz``) in process: 503 when the cache storage fails.

The load balancer takes an instance out when its storage fails, whether the check itself fails
right now or a storage call failed moments ago while pulls kept being served from upstream.
"""

from __future__ import annotations

from pathlib import Path

from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.storage import ObjectInfo, StorageError
from proxy.storage.filesystem import FilesystemStorage


class UncheckableStorage(FilesystemStorage):
    """A working directory whose readiness check fails (the volume went away, say)."""

    async def check(self) -> None:
        raise StorageError("cache volume is gone")


class ReadFailsOnce(FilesystemStorage):
    """A working directory whose first read fails, as a flaky network volume or S3 would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failures_left = 1

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        if self.failures_left:
            self.failures_left -= 1
            raise StorageError("read timed out")
        return await super().get(key)


async def test_ready_when_storage_and_upstream_answer(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub)
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "storage": "ok", "upstream": "ok"}


async def test_not_ready_when_the_storage_check_fails(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    client = await make_proxy(fakehub, storage_backend=UncheckableStorage(tmp_path / "cache"))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "degraded"
    assert body["storage"] == "failing: cache volume is gone"
    assert body["upstream"] == "ok"


async def test_not_ready_after_a_recent_storage_error(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub, storage_backend=ReadFailsOnce(tmp_path / "cache"))
    assert (await client.get("/readyz")).status == 200
    # The pull itself succeeds from upstream: a storage failure costs caching, not the build.
    pull = await client.get("/v2/library/golang/manifests/1.22", headers=ACCEPT_ALL)
    assert pull.status == 200
    assert await pull.read() == image.manifest
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["storage"].startswith("recent error:")
    assert "read timed out" in body["storage"]
