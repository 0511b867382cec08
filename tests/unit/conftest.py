"""Fixtures of the unit tests that run on every storage backend: ``backend`` (and its
``storage``) is the local directory on tmp_path, then S3 on the session's moto server
(unit/storage/test_base.py, the conformance suite; unit/cache/upkeep/test_lastuse.py)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.backends import PART_SIZE, Backend, BackendFactory
from support.moto import MotoServer

from proxy.storage import Storage
from proxy.storage.filesystem import FilesystemStorage
from proxy.storage.s3 import S3Storage


@pytest.fixture(params=["filesystem", "s3"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    if request.param == "filesystem":

        async def filesystem() -> Backend:
            store = FilesystemStorage(tmp_path / "cache")
            await store.open()

            async def leftovers() -> list[str]:
                return sorted(path.name for path in store.tmp_dir.iterdir())

            async def remove_directory() -> None:
                shutil.rmtree(store.root)

            return Backend("filesystem", store, leftovers, remove_directory)

        return filesystem

    moto: MotoServer = request.getfixturevalue("moto_endpoint")
    bucket = moto.create_bucket()

    async def s3() -> Backend:
        store = S3Storage(bucket, "cache/v1", endpoint_url=moto.endpoint_url, part_size=PART_SIZE)
        await store.open()

        async def leftovers() -> list[str]:
            uploads = await store.client.list_multipart_uploads(Bucket=bucket)
            return sorted(str(upload["Key"]) for upload in uploads.get("Uploads", []))

        async def delete_bucket() -> None:
            found = await store.client.list_objects_v2(Bucket=bucket)
            for item in found.get("Contents", []):
                await store.client.delete_object(Bucket=bucket, Key=item["Key"])
            await store.client.delete_bucket(Bucket=bucket)

        return Backend("s3", store, leftovers, delete_bucket)

    return s3


@pytest.fixture
async def backend(backend_factory: BackendFactory) -> AsyncIterator[Backend]:
    made = await backend_factory()
    try:
        yield made
    finally:
        await made.storage.close()


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.storage
