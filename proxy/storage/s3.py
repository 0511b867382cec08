"""S3 storage: placeholder until the S3 backend lands (issue 3)."""

from __future__ import annotations

from proxy.storage.base import Storage


class S3Storage(Storage):  # type: ignore[misc]
    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> None:
        raise NotImplementedError("S3 storage is not implemented yet")
