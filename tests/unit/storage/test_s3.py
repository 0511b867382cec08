"""S3-specific behaviour of ``S3Storage``, against a real S3 endpoint (moto server on loopback).

The semantics shared with the filesystem backend are in test_base.py; this covers what only S3
has: object naming under the prefix, multipart uploads and their memory bound, conditional
writes racing between instances, start-up errors, retries, and presigned URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import ClientError
from support.moto import MotoServer
from support.storage_data import MiB, blob_key, chunks, collect, payload, sha256, write_all

from proxy.storage import DigestMismatch, ObjectInfo, StorageError, s3
from proxy.storage.s3 import MIN_PART_SIZE, S3BlobWriter, S3Storage

PART = MIN_PART_SIZE


@pytest.fixture
def bucket(moto_endpoint: MotoServer) -> str:
    return moto_endpoint.create_bucket()


@pytest.fixture
async def store(moto_endpoint: MotoServer, bucket: str) -> AsyncIterator[S3Storage]:
    storage = S3Storage(bucket, "cache", endpoint_url=moto_endpoint.endpoint_url, part_size=PART)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


async def pending_uploads(store: S3Storage) -> list[str]:
    found = await store.client.list_multipart_uploads(Bucket=store.bucket)
    return [str(upload["Key"]) for upload in found.get("Uploads", [])]


async def object_names(store: S3Storage) -> list[str]:
    found = await store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(str(item["Key"]) for item in found.get("Contents", []))


# -- naming -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("cache", "cache/k/one"), ("", "k/one"), ("/a/b/", "a/b/k/one")],
)
async def test_object_key_is_prefix_slash_key(
    moto_endpoint: MotoServer, bucket: str, prefix: str, expected: str
) -> None:
    storage = S3Storage(bucket, prefix, endpoint_url=moto_endpoint.endpoint_url)
    await storage.open()
    try:
        await storage.put("k/one", b"1")
        assert await object_names(storage) == [expected]
        assert [key async for key in storage.keys("k/")] == ["k/one"]
        assert [key async for key in storage.keys("")] == ["k/one"]
    finally:
        await storage.close()


async def test_keys_ignore_objects_outside_the_prefix(store: S3Storage) -> None:
    await store.client.put_object(Bucket=store.bucket, Key="other/k/one", Body=b"x")
    await store.client.put_object(Bucket=store.bucket, Key="cache-old/k/one", Body=b"x")
    await store.put("k/two", b"2")
    assert [key async for key in store.keys("")] == ["k/two"]


async def test_keys_paginate(store: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 4)
    names = [f"k/{index:02d}" for index in range(11)]
    await asyncio.gather(*(store.put(name, b"") for name in names))
    requests = 0

    def count(**_: Any) -> None:
        nonlocal requests
        requests += 1

    store.client.meta.events.register("before-call.s3.ListObjectsV2", count)
    assert sorted([key async for key in store.keys("k/")]) == names
    assert requests == 3


# -- multipart uploads and memory ---------------------------------------------------------------


async def test_writer_memory_stays_bounded(store: S3Storage) -> None:
    """64 MiB in 1 MiB chunks with 5 MiB parts: never more than two parts (plus a chunk) held."""
    size = 64 * MiB
    chunk = bytes(range(256)) * (MiB // 256)
    data_hash = hashlib.sha256()
    for _ in range(size // MiB):
        data_hash.update(chunk)
    digest = data_hash.hexdigest()
    key = blob_key(digest)

    writer = await store.writer(key, digest, size)
    assert isinstance(writer, S3BlobWriter)
    observed = 0
    tracemalloc.start()
    try:
        for _ in range(size // MiB):
            await writer.write(chunk)
            observed = max(observed, writer.buffered)
            assert writer.buffered <= 2 * PART + MiB
        await writer.commit()
        _, heap_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(
        f"\nwriter peak buffered: {writer.peak_buffered / MiB:.1f} MiB "
        f"(observed between writes {observed / MiB:.1f} MiB), "
        f"Python heap peak during the upload: {heap_peak / MiB:.1f} MiB, blob {size // MiB} MiB"
    )
    assert writer.peak_buffered <= 2 * PART + MiB
    assert writer.peak_buffered >= PART  # it did buffer whole parts
    assert heap_peak < 3 * PART  # everything, botocore and aiohttp included: far below 64 MiB

    head = await store.client.head_object(Bucket=store.bucket, Key=store.object_key(key))
    assert head["ContentLength"] == size
    assert str(head["ETag"]).strip('"').endswith("-13")  # ceil(64 / 5) parts
    check = hashlib.sha256()
    async for piece in store.read(key):
        check.update(piece)
    assert check.hexdigest() == digest
    assert await pending_uploads(store) == []


async def test_small_blob_is_one_put_without_multipart(store: S3Storage) -> None:
    data = payload(PART - 1)
    writer = await store.writer(blob_key(sha256(data)), sha256(data), len(data))
    assert isinstance(writer, S3BlobWriter)
    await write_all(writer, data)
    assert writer.upload_id is None
    await writer.commit()
    head = await store.client.head_object(
        Bucket=store.bucket, Key=store.object_key(blob_key(sha256(data)))
    )
    assert "-" not in str(head["ETag"])


async def test_blob_of_exactly_whole_parts(store: S3Storage) -> None:
    data = payload(2 * PART)
    key = blob_key(sha256(data))
    writer = await store.writer(key, sha256(data), len(data), content_type="x/y")
    await write_all(writer, data)
    await writer.commit()
    assert await store.stat(key) == ObjectInfo(len(data), "x/y")
    assert await collect(store.read(key)) == data


async def test_part_size(store: S3Storage) -> None:
    with pytest.raises(ValueError, match="at least"):
        S3Storage("bucket", "", part_size=MIN_PART_SIZE - 1)
    writer = await store.writer("blobs/x", sha256(b""), 100 * 1024 * MiB)
    assert isinstance(writer, S3BlobWriter)
    assert writer.part_size == -(-100 * 1024 * MiB // 10_000)  # 10,000 parts at most
    await writer.abort()
    writer = await store.writer("blobs/x", sha256(b""), None)
    assert isinstance(writer, S3BlobWriter)
    assert writer.part_size == PART
    await writer.abort()


async def test_abort_mid_multipart_leaves_nothing(store: S3Storage) -> None:
    data = payload(3 * PART)
    key = blob_key(sha256(data))
    writer = await store.writer(key, sha256(data), len(data))
    assert isinstance(writer, S3BlobWriter)
    await write_all(writer, data[: 2 * PART + MiB])
    assert writer.upload_id is not None
    assert await pending_uploads(store) == [store.object_key(key)]

    await writer.abort()
    assert await pending_uploads(store) == []
    assert await object_names(store) == []


async def test_mismatch_in_multipart_leaves_nothing(store: S3Storage) -> None:
    data = payload(3 * PART)
    writer = await store.writer(blob_key(sha256(data)), sha256(data), len(data))
    assert isinstance(writer, S3BlobWriter)
    await write_all(writer, data[:-1] + b"!")
    assert writer.upload_id is not None
    with pytest.raises(DigestMismatch):
        await writer.commit()
    assert await pending_uploads(store) == []
    assert await object_names(store) == []


def fail_upload_part(store: S3Storage, monkeypatch: pytest.MonkeyPatch, failing: int) -> None:
    """Make the ``failing``-th UploadPart call fail as S3 would after its retries."""
    upload_part = store.client.upload_part
    calls = 0

    async def flaky_upload_part(**params: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "We encountered an error"}},
                "UploadPart",
            )
        return await upload_part(**params)

    monkeypatch.setattr(store.client, "upload_part", flaky_upload_part)


async def test_failed_part_upload_raises_storage_error_and_detach_cleans_up(
    store: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(4 * PART)
    writer = await store.writer(blob_key(sha256(data)), sha256(data), len(data))
    fail_upload_part(store, monkeypatch, failing=2)
    pieces = chunks(data)
    with pytest.raises(StorageError) as caught:
        for piece in pieces:
            await writer.write(piece)
    message = str(caught.value)
    assert "UploadPart 2" in message
    assert "InternalError" in message

    verifier = await writer.detach()  # what the blob pump does: keep verifying, stop storing
    for piece in pieces:
        await verifier.write(piece)
    await verifier.commit()
    assert await pending_uploads(store) == []
    assert await object_names(store) == []


async def test_upload_with_a_failed_part_is_never_completed(
    store: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing on after a failure and committing must not publish an object with a hole."""
    data = payload(4 * PART)
    writer = await store.writer(blob_key(sha256(data)), sha256(data), len(data))
    fail_upload_part(store, monkeypatch, failing=2)
    for piece in chunks(data):
        with contextlib.suppress(StorageError):
            await writer.write(piece)
    with pytest.raises(StorageError, match="earlier write failed"):
        await writer.commit()
    assert await pending_uploads(store) == []
    assert await object_names(store) == []


async def test_failure_of_the_last_part_in_flight_surfaces_at_commit(
    store: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(2 * PART + 100)
    writer = await store.writer(blob_key(sha256(data)), sha256(data), len(data))
    fail_upload_part(store, monkeypatch, failing=2)
    await write_all(writer, data)
    with pytest.raises(StorageError, match="UploadPart 2"):
        await writer.commit()
    assert await pending_uploads(store) == []
    assert await object_names(store) == []


# -- conditional writes -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MiB, 2 * PART + 1], ids=["one-part", "multipart"])
async def test_two_instances_racing_on_one_digest(
    moto_endpoint: MotoServer, bucket: str, size: int
) -> None:
    """Two proxies (own clients) write the same blob at once: both commits succeed, one object
    with the right bytes, no multipart upload left over."""
    data = payload(size, seed=7)
    digest = sha256(data)
    key = blob_key(digest)
    stores = [
        S3Storage(bucket, "cache", endpoint_url=moto_endpoint.endpoint_url, part_size=PART)
        for _ in range(2)
    ]
    for storage in stores:
        await storage.open()
    try:
        writers = [await storage.writer(key, digest, size) for storage in stores]
        for piece in chunks(data):
            for writer in writers:
                await writer.write(piece)
        await asyncio.gather(*(writer.commit() for writer in writers))

        assert await object_names(stores[0]) == [stores[0].object_key(key)]
        assert await collect(stores[1].read(key)) == data
        assert await pending_uploads(stores[0]) == []
    finally:
        for storage in stores:
            await storage.close()


@pytest.mark.parametrize("size", [MiB, 2 * PART + 1], ids=["one-part", "multipart"])
async def test_commit_never_replaces_an_existing_object(store: S3Storage, size: int) -> None:
    data = payload(size)
    key = blob_key(sha256(data))
    await store.put(key, b"already here")
    writer = await store.writer(key, sha256(data), size)
    await write_all(writer, data)
    await writer.commit()  # If-None-Match: * refused it: counts as stored
    assert await store.get(key) == (b"already here", ObjectInfo(12, None))
    assert await pending_uploads(store) == []


def conflict(operation: str) -> ClientError:
    """What S3 answers a conditional write while another write of the key is in progress."""
    return ClientError(
        {
            "Error": {"Code": "ConditionalRequestConflict", "Message": "in progress"},
            "ResponseMetadata": {"HTTPStatusCode": 409},
        },
        operation,
    )


@pytest.mark.parametrize("size", [MiB, 2 * PART + 1], ids=["one-part", "multipart"])
async def test_a_conflict_with_a_write_in_progress_counts_as_stored(
    store: S3Storage, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """409 ConditionalRequestConflict: another instance is writing the same digest right now.
    Same bytes, so this commit is done: no error, and no multipart upload of ours left over."""
    data = payload(size, seed=9)
    key = blob_key(sha256(data))
    refused: list[str] = []
    put_object = store.client.put_object

    async def conditional_put(**params: Any) -> Any:
        if params.get("IfNoneMatch") == "*":
            refused.append("PutObject")
            raise conflict("PutObject")
        return await put_object(**params)

    async def conditional_complete(**params: Any) -> Any:
        refused.append("CompleteMultipartUpload")
        raise conflict("CompleteMultipartUpload")

    monkeypatch.setattr(store.client, "put_object", conditional_put)
    monkeypatch.setattr(store.client, "complete_multipart_upload", conditional_complete)
    writer = await store.writer(key, sha256(data), size)
    await write_all(writer, data)
    await writer.commit()
    assert refused == ["PutObject" if size < PART else "CompleteMultipartUpload"]
    assert await pending_uploads(store) == []
    assert await store.stat(key) is None  # the other writer publishes it, not this one
    assert await store.put("k/y", b"z") is False  # put without overwrite: "already there"
    monkeypatch.undo()
    assert await store.put("k/y", b"z") is True


async def test_concurrent_puts_without_overwrite(store: S3Storage) -> None:
    results = await asyncio.gather(*(store.put("k/x", bytes([n]) * 10) for n in range(5)))
    assert results.count(True) == 1
    found = await store.get("k/x")
    assert found is not None
    assert found[0] == bytes([results.index(True)]) * 10


# -- start-up and errors ------------------------------------------------------------------------


async def test_missing_bucket_stops_open(moto_endpoint: MotoServer) -> None:
    storage = S3Storage("no-such-bucket-here", "cache", endpoint_url=moto_endpoint.endpoint_url)
    with pytest.raises(StorageError) as caught:
        await storage.open()
    message = str(caught.value)
    assert "'no-such-bucket-here'" in message
    assert "does not exist" in message
    assert "PROXY_STORAGE" in message
    assert "\n" not in message
    await storage.close()  # harmless after a failed open


async def test_bad_credentials_stop_open() -> None:
    with MotoServer(auth=True) as server:  # every access key is unknown to it
        storage = S3Storage("some-bucket", "cache", endpoint_url=server.endpoint_url)
        with pytest.raises(StorageError) as caught:
            await storage.open()
    message = str(caught.value)
    assert "'some-bucket'" in message
    assert "access denied" in message
    assert "\n" not in message


async def test_no_credentials_stop_open(
    moto_endpoint: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage = S3Storage(bucket, "cache", endpoint_url=moto_endpoint.endpoint_url)
    with pytest.raises(StorageError, match="no AWS credentials"):
        await storage.open()


async def test_unreachable_endpoint_stops_open() -> None:
    from support.binaries import free_port

    storage = S3Storage(
        "some-bucket",
        "cache",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        max_attempts=2,
        connect_timeout=1,
    )
    with pytest.raises(StorageError, match="cannot reach S3"):
        await storage.open()


async def test_region_defaults_to_us_east_1(
    moto_endpoint: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage = S3Storage(bucket, "cache", endpoint_url=moto_endpoint.endpoint_url)
    await storage.open()
    try:
        assert storage.client.meta.region_name == "us-east-1"
    finally:
        await storage.close()


async def test_region_from_aws_region(
    moto_endpoint: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # what ECS sets (botocore reads only the other)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage = S3Storage(bucket, "cache", endpoint_url=moto_endpoint.endpoint_url)
    await storage.open()
    try:
        assert storage.client.meta.region_name == "eu-west-1"
    finally:
        await storage.close()


async def test_client_config(store: S3Storage) -> None:
    config = store.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert config.connect_timeout == 5.0
    assert config.read_timeout == 30.0
    assert config.max_pool_connections == 64


async def test_s3_errors_become_storage_errors(moto_endpoint: MotoServer) -> None:
    bucket = moto_endpoint.create_bucket()
    storage = S3Storage(bucket, "cache", endpoint_url=moto_endpoint.endpoint_url)
    await storage.open()
    try:
        await storage.client.delete_bucket(Bucket=bucket)
        with pytest.raises(StorageError, match=r"GetObject s3://.*/cache/k/x: NoSuchBucket"):
            await storage.get("k/x")
        with pytest.raises(StorageError, match=r"PutObject .*NoSuchBucket"):
            await storage.put("k/x", b"x")
        with pytest.raises(StorageError, match="NoSuchBucket"):
            await collect(storage.read("k/x"))
        with pytest.raises(StorageError, match="HeadBucket"):
            await storage.check()
        with pytest.raises(StorageError, match="ListObjectsV2"):
            [key async for key in storage.keys("")]
        writer = await storage.writer("k/x", sha256(b"x"), 1)
        await writer.write(b"x")
        with pytest.raises(StorageError, match=r"PutObject .*NoSuchBucket"):
            await writer.commit()
    finally:
        await storage.close()
    with pytest.raises(StorageError, match="not open"):
        await storage.stat("k/x")


# -- retries (a fake endpoint that fails on purpose) ---------------------------------------------


class FlakyS3:
    """Answers HeadBucket, and GetObject with ``failures`` errors before a NoSuchKey."""

    def __init__(self, failures: int, status: int, code: str) -> None:
        self.failures = failures
        self.status = status
        self.code = code
        self.gets = 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "HEAD":
            return web.Response(status=200)
        self.gets += 1
        if self.gets <= self.failures:
            return self.error(self.status, self.code)
        return self.error(404, "NoSuchKey")

    @staticmethod
    def error(status: int, code: str) -> web.Response:
        body = f"<Error><Code>{code}</Code><Message>{code} on purpose</Message></Error>"
        return web.Response(status=status, text=body, content_type="application/xml")


@pytest.fixture
async def flaky_s3() -> AsyncIterator[tuple[FlakyS3, str]]:
    flaky = FlakyS3(failures=0, status=500, code="InternalError")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", flaky.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield flaky, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "code", "attempts"),
    [(503, "SlowDown", 2), (500, "InternalError", 3), (503, "ServiceUnavailable", 2)],
)
async def test_throttling_and_5xx_are_retried(
    flaky_s3: tuple[FlakyS3, str], status: int, code: str, attempts: int
) -> None:
    flaky, url = flaky_s3
    flaky.status, flaky.code, flaky.failures = status, code, attempts - 1
    storage = S3Storage("flaky", "cache", endpoint_url=url, max_attempts=attempts)
    await storage.open()
    try:
        assert await storage.get("k/x") is None  # the last attempt got through
        assert flaky.gets == attempts

        flaky.gets, flaky.failures = 0, 100
        with pytest.raises(StorageError, match=f"GetObject .*{code}"):
            await storage.get("k/x")
        assert flaky.gets == attempts
    finally:
        await storage.close()


# -- reading -----------------------------------------------------------------------------------


async def test_slow_reader_outlives_the_read_timeout(
    moto_endpoint: MotoServer, bucket: str
) -> None:
    """A client that pauses longer than read_timeout while the proxy streams to it must not
    break the S3 download: aiohttp stops the read timer while the body is not being consumed."""
    storage = S3Storage(bucket, "", endpoint_url=moto_endpoint.endpoint_url, read_timeout=0.5)
    await storage.open()
    try:
        data = payload(16 * MiB)
        await storage.put("blobs/big", data)
        stream = storage.read("blobs/big")
        received = [await anext(stream)]
        await asyncio.sleep(1.5)  # the slow client
        received += [chunk async for chunk in stream]
        assert b"".join(received) == data
    finally:
        await storage.close()


async def test_reads_go_in_ranged_parts(
    moto_endpoint: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = S3Storage(bucket, "", endpoint_url=moto_endpoint.endpoint_url, read_part_size=MiB)
    await storage.open()
    try:
        data = payload(3 * MiB + 5)
        await storage.put("blobs/parts", data)
        ranges: list[str] = []
        get_object = storage.client.get_object

        async def spy(**params: Any) -> Any:
            ranges.append(params["Range"])
            return await get_object(**params)

        monkeypatch.setattr(storage.client, "get_object", spy)
        assert await collect(storage.read("blobs/parts")) == data
        # The first part tells the size: the last one is cut at the last byte.
        assert ranges == [f"bytes={n * MiB}-{min((n + 1) * MiB, len(data)) - 1}" for n in range(4)]
        ranges.clear()
        assert (
            await collect(storage.read("blobs/parts", 1000, 2 * MiB + 9))
            == data[1000 : 2 * MiB + 10]
        )
        assert ranges == [
            f"bytes=1000-{MiB + 999}",
            f"bytes={MiB + 1000}-{2 * MiB + 9}",
        ]
        ranges.clear()
        assert await collect(storage.read("blobs/parts", len(data))) == b""  # past the end
        assert await collect(storage.read("blobs/parts", len(data) - 1)) == data[-1:]
    finally:
        await storage.close()


async def test_a_read_that_breaks_off_resumes_where_it_stopped(
    moto_endpoint: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost mid-part costs a new ranged request, not the client's transfer."""
    storage = S3Storage(bucket, "", endpoint_url=moto_endpoint.endpoint_url, read_part_size=MiB)
    await storage.open()
    try:
        data = payload(2 * MiB)
        await storage.put("blobs/breaks", data)
        ranges: list[str] = []
        get_object = storage.client.get_object
        broken = False

        async def break_the_first_body(**params: Any) -> Any:
            nonlocal broken
            ranges.append(params["Range"])
            response = await get_object(**params)
            if not broken:
                broken = True
                body = response["Body"]
                first = await body.read(1000)  # then the connection drops
                body.close()

                class Broken:
                    given = False

                    async def read(self, size: int) -> bytes:
                        if not self.given:
                            self.given = True
                            return bytes(first)
                        raise aiohttp.ClientPayloadError("connection reset")

                    def close(self) -> None:
                        pass

                response["Body"] = Broken()
            return response

        monkeypatch.setattr(storage.client, "get_object", break_the_first_body)
        assert await collect(storage.read("blobs/breaks")) == data
        assert ranges[:2] == [f"bytes=0-{MiB - 1}", f"bytes=1000-{MiB - 1}"]
    finally:
        await storage.close()


# -- presigned URLs -----------------------------------------------------------------------------


async def test_presigned_url_serves_the_object_with_range(store: S3Storage) -> None:
    data = payload(100_000)
    key = blob_key(sha256(data))
    await store.put(key, data, content_type="application/octet-stream")
    url = await store.presigned_url(key, 60)
    assert url is not None
    assert url.startswith(store.endpoint_url or "")
    assert "X-Amz-Signature=" in url  # SigV4

    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == data
        async with session.get(url, headers={"Range": "bytes=10-19"}) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
            assert await response.read() == data[10:20]


async def test_presigned_url_refuses_invalid_keys(store: S3Storage) -> None:
    with pytest.raises(ValueError):
        await store.presigned_url("../x", 60)
