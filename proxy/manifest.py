"""Manifest media types and Accept negotiation.

Manifests are stored and served byte-exact: the digest of a manifest is the sha256 of its exact
bytes, so nothing here ever re-serializes one. We only peek into the JSON to find a media type the
upstream did not send, or the platform manifest an older client needs from an index.
"""

from __future__ import annotations

import json
from typing import Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
MANIFEST_TYPES = (*INDEX_TYPES, *IMAGE_TYPES)

# What we ask upstreams for: every modern type, so the stored manifest is the canonical one.
UPSTREAM_ACCEPT = ", ".join(MANIFEST_TYPES)

# The platform distribution serves to clients that cannot read an index.
DEFAULT_PLATFORM = {"os": "linux", "architecture": "amd64"}


def parse_accept(header_values: list[str]) -> set[str] | None:
    """Media types a client accepts; None means anything (no header, or */*)."""
    accepted: set[str] = set()
    for value in header_values:
        for item in value.split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type in ("*/*", "application/*"):
                return None
            if media_type:
                accepted.add(media_type)
    return accepted or None


def media_type_of(data: bytes, content_type: str | None) -> str:
    """The manifest's media type: the upstream's Content-Type, else the JSON's ``mediaType``."""
    declared = (content_type or "").split(";", 1)[0].strip()
    if declared in MANIFEST_TYPES or (declared and declared not in _GENERIC_TYPES):
        return declared
    document = _load(data)
    value = document.get("mediaType") if document else None
    if isinstance(value, str) and value:
        return value
    if document and "manifests" in document:
        return OCI_INDEX
    return OCI_MANIFEST


_GENERIC_TYPES = {"application/json", "text/plain", "application/octet-stream"}


def _load(data: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def default_platform_digest(index_bytes: bytes, accepted: set[str]) -> str | None:
    """The digest of the linux/amd64 manifest in an index, if its type is one the client accepts.

    Older clients that accept only single-image manifests get this from distribution too.
    """
    document = _load(index_bytes)
    entries = document.get("manifests") if document else None
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        platform = entry.get("platform") or {}
        if (
            isinstance(platform, dict)
            and all(platform.get(k) == v for k, v in DEFAULT_PLATFORM.items())
            and entry.get("mediaType") in accepted
            and isinstance(entry.get("digest"), str)
        ):
            digest: str = entry["digest"]
            return digest
    return None


def referenced_digests(data: bytes) -> tuple[list[str], list[str]]:
    """(child manifest digests, blob digests) a manifest refers to: used by warm-up and scans."""
    document = _load(data) or {}
    manifests = [
        m["digest"]
        for m in document.get("manifests", [])
        if isinstance(m, dict) and isinstance(m.get("digest"), str)
    ]
    blobs = [
        layer["digest"]
        for layer in [document.get("config"), *document.get("layers", [])]
        if isinstance(layer, dict) and isinstance(layer.get("digest"), str)
    ]
    return manifests, blobs
