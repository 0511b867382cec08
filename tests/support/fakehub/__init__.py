"""The fake Docker Hub (``support.fakehub.hub``), importable as ``support.fakehub``."""

from support.fakehub.hub import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    SERVICE,
    FakeHub,
    ImageInfo,
    IndexInfo,
    RecordedRequest,
    ServerName,
)

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "SERVICE",
    "FakeHub",
    "ImageInfo",
    "IndexInfo",
    "RecordedRequest",
    "ServerName",
]
