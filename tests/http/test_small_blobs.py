"""Small cached blobs (image configs) answered from memory (proxy/cache/blobs.py, SMALL_BLOB).

On both backends: byte-exact for whole GETs, every kind of Range and HEADs; after the first hit
no storage call at all; bytes that do not match their digest are never kept or served.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from support.fakehub import FakeHub
from support.moto import MotoServer
from support.proxy_app import Client, ProxyFactory, downloads_settled

from proxy.cache.blobs import SMALL_BLOB
from proxy.cache.keys import blob_key
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest
from proxy.storage.filesystem import FilesystemStorage
from proxy.storage.s3 import S3Storage

SMALL = os.urandom(SMALL_BLOB - 123)
RANGES: list[tuple[str, slice]] = [
    ("bytes=0-0", slice(0, 1)),
    ("bytes=100-999", slice(100, 1000)),
    (f"bytes={len(SMALL) - 1}-", slice(len(SMALL) - 1, None)),
    ("bytes=-10", slice(-10, None)),
    (f"bytes=-{len(SMALL) + 5}", slice(0, None)),
    (f"bytes=2000-{len(SMALL) * 2}", slice(2000, None)),
]


class CountingStorage(FilesystemStorage):
    """A filesystem backend that counts the calls that read an object."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    async def open_local(self, key: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().open_local(key)

    async def stat(self, key: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().stat(key)


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def small_proxy(
    backend: str, fakehub: FakeHub, make_proxy: ProxyFactory, request: pytest.FixtureRequest
) -> Callable[[bytes], Awaitable[tuple[Client, str]]]:
    async def make(data: bytes) -> tuple[Client, str]:
        digest = fakehub.add_blob(data, repo="library/golang")
        storage = None
        if backend == "s3":
            moto: MotoServer = request.getfixturevalue("moto_endpoint")
            storage = S3Storage(moto.create_bucket(), "cache", endpoint_url=moto.endpoint_url)
        client = await make_proxy(fakehub, storage_backend=storage)
        assert await (await client.get(f"/v2/library/golang/blobs/{digest}")).read() == data
        await downloads_settled(client)
        return client, digest

    return make


async def test_small_blobs_are_byte_exact(
    small_proxy: Callable[[bytes], Awaitable[tuple[Client, str]]], fakehub: FakeHub
) -> None:
    client, digest = await small_proxy(SMALL)
    path = f"/v2/library/golang/blobs/{digest}"
    for _ in range(2):  # from storage, then from memory
        whole = await client.get(path)
        assert whole.headers["Content-Length"] == str(len(SMALL))
        assert await whole.read() == SMALL
    for header, selected in RANGES:
        part = await client.get(path, headers={"Range": header})
        expected = SMALL[selected]
        start = selected.start % len(SMALL) if selected.start else 0
        assert part.status == 206, header
        assert part.headers["Content-Range"] == (
            f"bytes {start}-{start + len(expected) - 1}/{len(SMALL)}"
        ), header
        assert await part.read() == expected, header
    head = await client.head(path)
    assert head.headers["Content-Length"] == str(len(SMALL))
    assert (await client.get(path, headers={"Range": f"bytes={len(SMALL)}-"})).status == 416
    assert fakehub.cdn_gets(digest) == 1


async def test_after_the_first_hit_no_storage_call(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    digest = fakehub.add_blob(SMALL, repo="library/golang")
    storage = CountingStorage(tmp_path / "counting")
    client = await make_proxy(fakehub, storage_backend=storage)
    path = f"/v2/library/golang/blobs/{digest}"
    assert await (await client.get(path)).read() == SMALL  # the miss
    await downloads_settled(client)
    assert await (await client.get(path)).read() == SMALL  # read from disk, kept
    reads = storage.reads
    for _ in range(5):
        assert await (await client.get(path)).read() == SMALL
        assert (await client.head(path)).headers["Content-Length"] == str(len(SMALL))
    assert storage.reads == reads


async def test_a_corrupt_small_blob_is_removed_never_served(
    small_proxy: Callable[[bytes], Awaitable[tuple[Client, str]]],
    fakehub: FakeHub,
    backend: str,
) -> None:
    client, digest = await small_proxy(SMALL)
    services = client.app[SERVICES]
    key = blob_key(Digest.parse(digest))
    inner = services.storage.inner
    if isinstance(inner, FilesystemStorage):
        (inner.data_dir / key).write_bytes(SMALL[:-1] + b"\0")
    else:
        await inner.put(key, SMALL[:-1] + b"\0", overwrite=True)
    fakehub.reset_counts()
    response = await client.get(f"/v2/library/golang/blobs/{digest}")
    assert await response.read() == SMALL  # fetched again from the upstream
    assert fakehub.cdn_gets(digest) == 1
    await downloads_settled(client)
    found = await inner.get(key)
    assert found is not None and found[0] == SMALL  # the verified refetch replaced it
