"""Cache storage backends behind one interface (``Storage``)."""

from proxy.storage.base import (
    BlobWriter,
    DigestMismatch,
    DiscardingWriter,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
)

__all__ = [
    "BlobWriter",
    "DigestMismatch",
    "DiscardingWriter",
    "ObjectInfo",
    "ObjectNotFound",
    "Storage",
    "StorageError",
]
