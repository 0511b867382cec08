"""Test data and small helpers shared by the storage tests (tests/unit/storage/)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterator

from proxy.storage import BlobWriter

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    """The hex sha256 of ``data`` (what writers are told to expect)."""
    return hashlib.sha256(data).hexdigest()


def blob_key(hex_digest: str) -> str:
    """The storage key the cache uses for a blob (``proxy.cache.keys.blob_key``'s layout)."""
    return f"blobs/sha256/{hex_digest[:2]}/{hex_digest}"


def chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def write_all(writer: BlobWriter, data: bytes, size: int = MiB) -> None:
    """Stream ``data`` into ``writer`` in chunks of ``size`` bytes."""
    for chunk in chunks(data, size):
        await writer.write(chunk)
