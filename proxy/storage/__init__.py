"""Cache storage backends behind one interface (``Storage``)."""

from proxy.storage.base import (
    BlobWriter,
    DigestMismatch,
    DiscardingWriter,
    ListedObject,
    ObjectCorrupt,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageFull,
)

__all__ = [
    "BlobWriter",
    "DigestMismatch",
    "DiscardingWriter",
    "ListedObject",
    "ObjectCorrupt",
    "ObjectInfo",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "StorageFull",
]
