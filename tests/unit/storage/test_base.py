"""The storage conformance suite: every backend keeps the semantics in ``proxy.storage.base``.

Each test runs against the local directory backend (on tmp_path) and the S3 backend (on a moto
server, with S3's smallest part size so that the "large" blobs go up as multipart uploads): the
``backend`` and ``storage`` fixtures of tests/unit/conftest.py. The last-use records, which rely
on nothing but these semantics, run on both backends too (tests/unit/cache/upkeep/test_lastuse.py).
"""

from __future__ import annotations

import time

import pytest
from support.backends import PART_SIZE, Backend
from support.storage_data import MiB, collect, payload, sha256, write_all
from support.storage_data import blob_key as key_for_digest

from proxy.storage import (
    DigestMismatch,
    DiscardingWriter,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
)

SMALL = 1000
LARGE = 2 * PART_SIZE + 12345  # three parts in S3, the last one short
CHUNK = MiB

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def blob_key(data: bytes) -> str:
    return key_for_digest(sha256(data))


# -- put / get / stat ---------------------------------------------------------------------------


async def test_put_get_stat_with_content_type(storage: Storage) -> None:
    data = b'{"schemaVersion": 2}'
    key = "manifests/sha256/ab/" + sha256(data)
    assert await storage.put(key, data, content_type=MANIFEST_TYPE) is True

    assert await storage.stat(key) == ObjectInfo(len(data), MANIFEST_TYPE)
    assert await storage.get(key) == (data, ObjectInfo(len(data), MANIFEST_TYPE))


async def test_put_without_content_type(storage: Storage) -> None:
    assert await storage.put("tags/host/library/x/_tag/latest", b"{}") is True
    assert await storage.stat("tags/host/library/x/_tag/latest") == ObjectInfo(2, None)


async def test_missing_object(storage: Storage) -> None:
    assert await storage.stat("blobs/sha256/00/missing") is None
    assert await storage.get("blobs/sha256/00/missing") is None


async def test_put_without_overwrite_keeps_the_first(storage: Storage) -> None:
    assert await storage.put("k/one", b"first", content_type="text/plain") is True
    assert await storage.put("k/one", b"second", content_type="text/other") is False
    assert await storage.get("k/one") == (b"first", ObjectInfo(5, "text/plain"))


async def test_put_with_overwrite_replaces(storage: Storage) -> None:
    assert await storage.put("k/one", b"first") is True
    assert await storage.put("k/one", b"second!", overwrite=True) is True
    found = await storage.get("k/one")
    assert found is not None
    assert found[0] == b"second!"
    assert found[1].size == 7


async def test_empty_object(storage: Storage) -> None:
    assert await storage.put("k/empty", b"") is True
    assert await storage.stat("k/empty") == ObjectInfo(0, None)
    assert await collect(storage.read("k/empty")) == b""


# -- read ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(None)),
        (0, 0, slice(0, 1)),
        (10, 19, slice(10, 20)),
        (100_000, None, slice(100_000, None)),
        (299_999, 299_999, slice(299_999, None)),  # the last byte
        (299_999, None, slice(299_999, None)),
        (250_000, 10_000_000, slice(250_000, None)),  # end past the object: to its end
        (300_000, None, slice(0, 0)),  # starts at the end: nothing
        (400_000, 500_000, slice(0, 0)),  # starts past the end: nothing
        (20, 10, slice(0, 0)),  # empty range
    ],
)
async def test_read_ranges(storage: Storage, start: int, end: int | None, expected: slice) -> None:
    data = payload(300_000)
    await storage.put("blobs/x", data)
    assert await collect(storage.read("blobs/x", start, end)) == data[expected]


async def test_read_streams_in_chunks(storage: Storage) -> None:
    data = payload(3 * CHUNK)
    await storage.put("blobs/x", data)
    pieces = [chunk async for chunk in storage.read("blobs/x")]
    assert len(pieces) > 1
    assert max(len(piece) for piece in pieces) < len(data)
    assert b"".join(pieces) == data


async def test_read_missing_raises(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await collect(storage.read("blobs/sha256/00/missing"))
    with pytest.raises(ObjectNotFound):
        await collect(storage.read("blobs/sha256/00/missing", 5, 10))


async def test_read_can_stop_early(storage: Storage) -> None:
    data = payload(3 * CHUNK)
    await storage.put("blobs/x", data)
    stream = storage.read("blobs/x")
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert data.startswith(first)
    assert await collect(storage.read("blobs/x", 1, 3)) == data[1:4]


# -- streaming writes ---------------------------------------------------------------------------

SIZES = pytest.mark.parametrize("size", [SMALL, LARGE], ids=["one-part", "multipart"])


@SIZES
async def test_writer_commit(backend: Backend, size: int) -> None:
    storage = backend.storage
    data = payload(size, seed=size)
    key = blob_key(data)
    writer = await storage.writer(key, sha256(data), len(data), content_type=LAYER_TYPE)
    assert writer.stores
    await write_all(writer, data)
    assert await storage.stat(key) is None  # not visible before the commit
    await writer.commit()

    assert await storage.stat(key) == ObjectInfo(size, LAYER_TYPE)
    assert await collect(storage.read(key)) == data
    assert await backend.leftovers() == []


async def test_writer_commit_without_expected_size(storage: Storage) -> None:
    data = payload(SMALL)
    writer = await storage.writer(blob_key(data), sha256(data))
    await write_all(writer, data)
    await writer.commit()
    assert await collect(storage.read(blob_key(data))) == data


async def test_writer_empty_blob(storage: Storage) -> None:
    writer = await storage.writer(blob_key(b""), sha256(b""), 0)
    await writer.commit()
    assert await storage.stat(blob_key(b"")) == ObjectInfo(0, None)


@SIZES
async def test_writer_wrong_bytes(backend: Backend, size: int) -> None:
    data = payload(size)
    wrong = bytearray(data)
    wrong[-1] ^= 0xFF
    writer = await backend.storage.writer(blob_key(data), sha256(data), len(data))
    await write_all(writer, bytes(wrong))
    with pytest.raises(DigestMismatch):
        await writer.commit()
    assert await backend.storage.stat(blob_key(data)) is None
    assert await backend.leftovers() == []


@SIZES
async def test_writer_too_many_bytes(backend: Backend, size: int) -> None:
    data = payload(size)
    writer = await backend.storage.writer(blob_key(data), sha256(data), len(data))
    await write_all(writer, data)
    with pytest.raises(DigestMismatch):
        await writer.write(b"x")
    with pytest.raises(DigestMismatch):
        await writer.commit()
    assert await backend.storage.stat(blob_key(data)) is None
    assert await backend.leftovers() == []


@SIZES
async def test_writer_too_few_bytes(backend: Backend, size: int) -> None:
    data = payload(size)
    writer = await backend.storage.writer(blob_key(data), sha256(data), len(data))
    await write_all(writer, data[:-1])
    with pytest.raises(DigestMismatch):
        await writer.commit()
    assert await backend.storage.stat(blob_key(data)) is None
    assert await backend.leftovers() == []


async def test_writer_too_few_bytes_without_expected_size(backend: Backend) -> None:
    data = payload(LARGE)
    writer = await backend.storage.writer(blob_key(data), sha256(data))
    await write_all(writer, data[:PART_SIZE])
    with pytest.raises(DigestMismatch):
        await writer.commit()
    assert await backend.storage.stat(blob_key(data)) is None
    assert await backend.leftovers() == []


@SIZES
async def test_writer_abort(backend: Backend, size: int) -> None:
    data = payload(size)
    writer = await backend.storage.writer(blob_key(data), sha256(data), len(data))
    await write_all(writer, data)
    await writer.abort()
    await writer.abort()  # idempotent
    assert await backend.storage.stat(blob_key(data)) is None
    assert await backend.leftovers() == []


async def test_writer_commit_keeps_an_existing_object(storage: Storage) -> None:
    data = payload(SMALL)
    key = blob_key(data)
    first = await storage.writer(key, sha256(data), len(data))
    second = await storage.writer(key, sha256(data), len(data))
    await write_all(first, data)
    await write_all(second, data)
    await first.commit()
    await second.commit()  # same digest already stored: fine
    assert await collect(storage.read(key)) == data


@SIZES
async def test_detached_writer_keeps_verifying(backend: Backend, size: int) -> None:
    data = payload(size)
    half = len(data) // 2
    writer = await backend.storage.writer(blob_key(data), sha256(data), len(data))
    await write_all(writer, data[:half])
    verifier = await writer.detach()
    assert isinstance(verifier, DiscardingWriter)
    assert not verifier.stores
    assert verifier.size == half
    await write_all(verifier, data[half:])
    await verifier.commit()  # verifies the whole stream: no DigestMismatch

    assert await backend.storage.stat(blob_key(data)) is None  # detached: nothing stored
    assert await backend.leftovers() == []

    writer = await backend.storage.writer(blob_key(data), sha256(data), len(data))
    await write_all(writer, data[:half])
    verifier = await writer.detach()
    await write_all(verifier, data[half:-1] + b"?")
    with pytest.raises(DigestMismatch):
        await verifier.commit()


# -- keys / delete ------------------------------------------------------------------------------


async def test_keys_and_delete(storage: Storage) -> None:
    names = [
        "blobs/sha256/aa/aa01",
        "blobs/sha256/ab/ab02",
        "manifests/sha256/aa/aa03",
        "tags/registry-1.docker.io/library/golang/_tag/1.22",
    ]
    for name in names:
        await storage.put(name, name.encode())

    assert sorted([key async for key in storage.keys("blobs/")]) == names[:2]
    assert sorted([key async for key in storage.keys("blobs/sha256/ab")]) == names[1:2]
    assert sorted([key async for key in storage.keys("")]) == names
    assert [key async for key in storage.keys("nothing/")] == []

    await storage.delete("blobs/sha256/aa/aa01")
    await storage.delete("blobs/sha256/aa/aa01")  # deleting a missing object is fine
    await storage.delete("never/there")
    assert await storage.stat("blobs/sha256/aa/aa01") is None
    assert sorted([key async for key in storage.keys("blobs/")]) == names[1:2]


async def test_list_objects_tells_size_and_time_written(storage: Storage) -> None:
    before = time.time()
    await storage.put("blobs/sha256/aa/aa01", b"x" * 10)
    await storage.put("blobs/sha256/ab/ab02", b"")
    await storage.put("manifests/sha256/aa/aa03", b"{}", content_type=MANIFEST_TYPE)
    after = time.time()

    listed = {entry.key: entry async for entry in storage.list_objects("blobs/")}
    assert sorted(listed) == ["blobs/sha256/aa/aa01", "blobs/sha256/ab/ab02"]
    assert listed["blobs/sha256/aa/aa01"].size == 10
    assert listed["blobs/sha256/ab/ab02"].size == 0
    for entry in listed.values():
        # S3 keeps whole seconds; the moto server runs on this machine's clock.
        assert before - 2 <= entry.modified <= after + 2
    # A prefix may end inside a name, as with keys().
    assert sorted([e.key async for e in storage.list_objects("blobs/sha256/a")]) == sorted(listed)
    assert [e.key async for e in storage.list_objects("manifests/sha256/aa/aa0")] == [
        "manifests/sha256/aa/aa03"
    ]
    assert [e async for e in storage.list_objects("nothing/")] == []


async def test_list_objects_sees_a_rewrite(storage: Storage) -> None:
    await storage.put("tags/h/r/_tag/t", b"one")
    [first] = [e async for e in storage.list_objects("tags/")]
    await storage.put("tags/h/r/_tag/t", b"longer", overwrite=True)
    [second] = [e async for e in storage.list_objects("tags/")]
    assert second.size == 6
    assert second.modified >= first.modified


async def test_delete_many(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.storage.s3.DELETE_BATCH", 2)  # several S3 requests
    names = [f"blobs/sha256/aa/aa0{i}" for i in range(5)]
    for name in names:
        await storage.put(name, name.encode())
    await storage.delete_many([*names[:3], "blobs/sha256/00/never-there"])
    await storage.delete_many([])
    assert sorted([key async for key in storage.keys("blobs/")]) == names[3:]
    assert await storage.stat(names[0]) is None


async def test_check(backend: Backend) -> None:
    await backend.storage.check()  # usable: no error
    await backend.make_unusable()
    with pytest.raises(StorageError):
        await backend.storage.check()


# -- keys are validated -------------------------------------------------------------------------

INVALID_KEYS = ["../x", "/abs", "a//b", "a/../b", "a/", "", "a/./b"]


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_invalid_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        await storage.stat(key)
    with pytest.raises(ValueError):
        await storage.get(key)
    with pytest.raises(ValueError):
        await storage.put(key, b"x")
    with pytest.raises(ValueError):
        await collect(storage.read(key))
    with pytest.raises(ValueError):
        await storage.writer(key, sha256(b"x"), 1)
    with pytest.raises(ValueError):
        await storage.delete(key)
