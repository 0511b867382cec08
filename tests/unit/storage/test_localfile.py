"""proxy/storage/localfile.py: a cached object opened on local disk reads the bytes it had when it
was opened, whatever happens to its entry until it is closed; a small one is read whole at once.
Sent with sendfile through the app: tests/http/test_blob_serving.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from proxy.storage.localfile import READ_CHUNK, READ_WHOLE_UP_TO, LocalFile

LARGE = os.urandom(2 * READ_CHUNK + 123)


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_an_open_object_outlives_its_entry(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(LARGE)
    local = LocalFile.open(path)
    try:
        assert local.file is not None and local.data is None and local.size == len(LARGE)
        path.unlink()  # an eviction
        path.write_bytes(b"something else under the same name")  # a new commit
        assert await collect(local.read()) == LARGE
        assert (
            await collect(local.read(READ_CHUNK - 1, READ_CHUNK + 1))
            == LARGE[READ_CHUNK - 1 : READ_CHUNK + 2]
        )
        assert await collect(local.read(len(LARGE) - 1, len(LARGE) + 99)) == LARGE[-1:]
    finally:
        local.close()


async def test_a_small_object_is_read_whole_and_its_file_closed(tmp_path: Path) -> None:
    data = b"x" * READ_WHOLE_UP_TO
    path = tmp_path / "config"
    path.write_bytes(data)
    local = LocalFile.open(path)
    assert local.file is None and local.data == data and local.size == len(data)
    path.unlink()
    assert await collect(local.read(1, 3)) == b"xxx"
    assert await collect(local.read(len(data))) == b""
    local.close()
