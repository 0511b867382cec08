"""The filesystem backend (proxy/storage/filesystem.py): a key never leads out of the cache
directory, a blob whose size changed is corrupt, and a partial write that vanishes is a storage
failure.

Keys are checked against the key grammar first (``check_key``: no ``..``, no absolute path);
behind that, every path is resolved and must stay under its directory. These tests reach that
second guard alone, with keys the grammar accepts: a symlink planted inside the cache (by
another process, a restore, an operator) that points out of it is never followed, for reads,
writes or deletes. The semantics every backend keeps: tests/unit/storage/test_base.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.storage_data import collect, payload, sha256, write_all

from proxy.storage.base import ObjectCorrupt, check_key
from proxy.storage.filesystem import FilesystemStorage

SECRET = b"outside the cache"
HEX = "ab" + "0" * 62


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FilesystemStorage]:
    storage = FilesystemStorage(tmp_path / "cache")
    await storage.open()
    yield storage
    await storage.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / HEX).write_bytes(SECRET)
    return directory


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def escapes() -> pytest.RaisesExc[ValueError]:
    return pytest.raises(ValueError, match="escapes the cache directory")


async def test_a_symlinked_directory_is_not_followed(
    store: FilesystemStorage, outside: Path
) -> None:
    link = store.data_dir / "blobs" / "sha256" / "ab"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    key = f"blobs/sha256/ab/{HEX}"
    assert check_key(key) == key  # the grammar lets it through: only the guard stands

    with escapes():
        await store.stat(key)
    with escapes():
        await store.get(key)
    with escapes():
        await collect(store.read(key))
    with escapes():
        await store.delete(key)
    new_key = f"blobs/sha256/ab/{'ab' + '1' * 62}"
    with escapes():
        await store.put(new_key, b"written through the link")
    data = payload(1000)
    writer = await store.writer(f"blobs/sha256/ab/{sha256(data)}", sha256(data), len(data))
    await write_all(writer, data)
    with escapes():
        await writer.commit()
    assert names(outside) == [HEX]  # nothing written there, nothing removed
    assert (outside / HEX).read_bytes() == SECRET


async def test_a_symlinked_object_is_not_followed(store: FilesystemStorage, outside: Path) -> None:
    key = f"manifests/sha256/ab/{HEX}"
    link = store.data_dir / key
    link.parent.mkdir(parents=True)
    link.symlink_to(outside / HEX)
    with escapes():
        await store.get(key)
    with escapes():
        await collect(store.read(key))
    with escapes():
        await store.put(key, b"replace it", overwrite=True)
    assert (outside / HEX).read_bytes() == SECRET


async def test_symlinked_metadata_is_not_followed(store: FilesystemStorage, outside: Path) -> None:
    key = f"manifests/sha256/ab/{HEX}"
    await store.put(key, b"{}", content_type="application/json")
    meta = store.meta_dir / key
    meta.unlink()
    meta.symlink_to(outside / HEX)
    with escapes():
        await store.stat(key)
    with escapes():
        await store.put(key, b"{}", content_type="text/plain", overwrite=True)
    assert (outside / HEX).read_bytes() == SECRET


async def test_links_that_stay_inside_the_cache_are_fine(store: FilesystemStorage) -> None:
    """The guard is about where a path leads, not about links as such."""
    await store.put(f"blobs/sha256/cd/{HEX}", b"inside")
    (store.data_dir / "blobs" / "sha256" / "ab").symlink_to(
        store.data_dir / "blobs" / "sha256" / "cd", target_is_directory=True
    )
    found = await store.get(f"blobs/sha256/ab/{HEX}")
    assert found is not None and found[0] == b"inside"


# --- the committed size (issue 21, item 8) ------------------------------------------------------


async def committed_blob(store: FilesystemStorage, size: int = 100_000) -> tuple[str, bytes]:
    data = payload(size)
    key = f"blobs/sha256/{sha256(data)[:2]}/{sha256(data)}"
    writer = await store.writer(key, sha256(data), len(data))
    await write_all(writer, data)
    await writer.commit()
    return key, data


@pytest.mark.parametrize("attributes", [True, False], ids=["xattr", "meta-file"])
async def test_a_blob_whose_size_changed_is_corrupt_and_removed(
    store: FilesystemStorage, attributes: bool
) -> None:
    """The size committed is kept where rewriting the bytes does not change it (an extended
    attribute; without them, the meta file); every lookup compares it."""
    store.attributes = attributes
    key, data = await committed_blob(store)
    path = store.data_dir / key
    assert (await store.stat(key)) is not None
    local = await store.open_local(key)
    assert local is not None and local.size == len(data)
    local.close()
    for damage in (b"", b"grown"):
        with path.open("r+b") as file:
            file.truncate(len(data) // 2) if not damage else file.seek(0, 2)
            file.write(damage)
        lookup = {b"": store.open_local, b"grown": store.stat}[damage]
        with pytest.raises(ObjectCorrupt, match=f"committed with {len(data)}"):
            await lookup(key)
        assert not path.exists()
        key, data = await committed_blob(store)
    with path.open("r+b") as file:
        file.truncate(10)
    with pytest.raises(ObjectCorrupt):
        await store.get(key)
    assert not path.exists()


async def test_a_blob_without_a_recorded_size_gets_one_once_verified(
    store: FilesystemStorage,
) -> None:
    """Written by an earlier version: trusted on size until the scrub verified it."""
    data = payload(100_000)
    key = f"blobs/sha256/{sha256(data)[:2]}/{sha256(data)}"
    assert await store.put(key, data)  # puts record no size (manifests, records)
    path = store.data_dir / key
    await store.verified(key, len(data))
    with path.open("r+b") as file:
        file.truncate(5)
    with pytest.raises(ObjectCorrupt):
        await store.stat(key)


async def test_a_partial_write_that_vanishes_is_a_storage_failure(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path)
    await storage.open()
    data = b"a blob whose partial file is removed from under its writer"
    from proxy.registry.reference import Digest
    from proxy.storage import StorageError

    digest = Digest.of(data)
    writer = await storage.writer(f"blobs/sha256/{digest.hex[:2]}/{digest.hex}", digest.hex)
    await writer.write(data)
    for leftover in (tmp_path / "tmp").iterdir():
        leftover.unlink()
    with pytest.raises(StorageError, match="vanished"):
        await writer.commit()
