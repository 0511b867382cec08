"""The storage backends the suites that hold for every backend run on (tests/unit/conftest.py
makes them fixtures): the local directory, and S3 on a moto server with S3's smallest part size,
so that "large" blobs go up as multipart uploads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.storage import Storage
from proxy.storage.s3 import MIN_PART_SIZE

PART_SIZE = MIN_PART_SIZE


@dataclass
class Backend:
    """An opened storage plus a way to see what an unfinished write left behind."""

    name: str
    storage: Storage
    leftovers: Callable[[], Awaitable[list[str]]]
    make_unusable: Callable[[], Awaitable[None]]
    """Take the backend's ground away (the directory, the bucket) under the open storage."""


BackendFactory = Callable[[], Awaitable[Backend]]
