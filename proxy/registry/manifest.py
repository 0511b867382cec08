"""Manifest media types and Accept negotiation.

Manifests are stored and served byte-exact: the digest of a manifest is the sha256 of its exact
bytes, so nothing here ever re-serializes one. We only peek into the JSON to find a media type the
upstream did not send, or the platform manifest an older client needs from an index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any

from proxy.registry.errors import RegistryError
from proxy.registry.reference import Digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# The artifact manifest of OCI 1.1's release candidates (dropped from the final 1.1 in favour of
# image manifests with ``artifactType``); some registries and older oras/notation still use it.
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"

# Docker's first manifest format, long deprecated; some old images still exist only in it.
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
MANIFEST_TYPES = (*INDEX_TYPES, *IMAGE_TYPES)
# Every media type the proxy stores and serves a manifest as. Anything else is not a manifest to
# a registry client (they read a manifest by its type), and serving it would let whoever controls
# an upstream answer put a page of their own on the proxy's origin: refused (media_type_of).
KNOWN_MANIFEST_TYPES = frozenset(
    (*MANIFEST_TYPES, OCI_ARTIFACT_MANIFEST, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as stored and served: its exact bytes, their media type and digest.

    ``stale_reason`` is set only on an answer served from the cache because the upstream could
    not be asked (a fixed phrase, safe to show to every client: see ``UpstreamError.reason``).
    """

    data: bytes
    media_type: str
    digest: Digest
    stale_reason: str | None = None

    def served_stale(self, reason: str) -> Manifest:
        return replace(self, stale_reason=reason)


# What we ask upstreams for: every modern type, so the stored manifest is the canonical one, and
# the artifact manifest, so that a registry that negotiates strictly serves one it holds instead
# of a 404. An answer of any other type is refused (see media_type_of).
UPSTREAM_ACCEPT = ", ".join((*MANIFEST_TYPES, OCI_ARTIFACT_MANIFEST))

# The platform distribution serves to clients that cannot read an index.
DEFAULT_PLATFORM = {"os": "linux", "architecture": "amd64"}


def parse_accept(header_values: Sequence[str]) -> frozenset[str] | None:
    """Media types a client accepts; None means anything (no header, or */*)."""
    accepted: set[str] = set()
    for value in header_values:
        for item in value.split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type in ("*/*", "application/*"):
                return None
            if media_type:
                accepted.add(media_type)
    return frozenset(accepted) or None


def media_type_of(data: bytes, content_type: str | None) -> str | None:
    """The manifest's media type, or None when the answer is not a manifest the proxy knows.

    The upstream's Content-Type when it is a manifest type; else, when it declared a generic
    type (or none), the JSON's ``mediaType`` or, for JSON without one, a guess from its shape
    (``data`` empty, as for a HEAD: an image manifest). Another declared type (``text/html``),
    a ``mediaType`` that is not a manifest type, or bytes that are not a JSON object: None.
    """
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in KNOWN_MANIFEST_TYPES:
        return declared
    if declared and declared not in _GENERIC_TYPES:
        return None
    if not data:
        return OCI_MANIFEST
    document = _load(data)
    if document is None:
        return None
    value = document.get("mediaType")
    if value is not None:
        return value if value in KNOWN_MANIFEST_TYPES else None
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


_GENERIC_TYPES = {"application/json", "text/plain", "application/octet-stream"}


def _load(data: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


@dataclass(frozen=True, slots=True)
class PlatformManifest:
    """One entry of an index: a platform's manifest."""

    digest: str
    media_type: str | None
    platform: dict[str, str]

    @property
    def label(self) -> str:
        """``os/architecture[/variant]``, e.g. ``linux/arm64/v8``."""
        parts = (self.platform.get(k) for k in ("os", "architecture", "variant"))
        return "/".join(p for p in parts if p) or "unknown"

    @property
    def is_attestation(self) -> bool:
        """BuildKit's attestation manifests carry the platform unknown/unknown."""
        return self.platform.get("os") == "unknown"


def platform_manifests(index_bytes: bytes) -> list[PlatformManifest]:
    """The well-formed entries of an index (others are skipped, never trusted)."""
    document = _load(index_bytes)
    entries = document.get("manifests") if document else None
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        platform = entry.get("platform")
        media_type = entry.get("mediaType")
        found.append(
            PlatformManifest(
                entry["digest"],
                media_type if isinstance(media_type, str) else None,
                {k: v for k, v in platform.items() if isinstance(v, str)}
                if isinstance(platform, dict)
                else {},
            )
        )
    return found


def default_platform_digest(index_bytes: bytes, accepted: AbstractSet[str]) -> str | None:
    """The digest of the linux/amd64 manifest in an index, if its type is one the client accepts.

    Older clients that accept only single-image manifests get this from distribution too.
    """
    for entry in platform_manifests(index_bytes):
        if (
            all(entry.platform.get(k) == v for k, v in DEFAULT_PLATFORM.items())
            and entry.media_type in accepted
        ):
            return entry.digest
    return None


def referenced_digests(data: bytes, media_type: str | None) -> tuple[list[str], list[str]]:
    """(child manifest digests, blob digests) a manifest refers to, read by its media type only:
    an index's ``manifests``; an image manifest's ``config`` and ``layers``; an artifact
    manifest's ``blobs``. Other fields are ignored, as registries ignore them (a ``manifests``
    list in an image manifest is not checked by anyone), and a ``subject`` is never a reference:
    it points the other way. Used by warm-up, use propagation and scans, never to decide what a
    repository may read (``proxy.cache.links``). ``media_type`` None: the document's own."""
    document = _load(data) or {}
    kind = media_type or media_type_of(data, None)
    if kind in INDEX_TYPES:
        return [m["digest"] for m in _descriptors(document.get("manifests"))], []
    if kind in IMAGE_TYPES:
        described = [*_descriptors([document.get("config")]), *_descriptors(document.get("layers"))]
    elif kind == OCI_ARTIFACT_MANIFEST:
        described = _descriptors(document.get("blobs"))
    else:
        described = []
    return [], [descriptor["digest"] for descriptor in described]


@dataclass(frozen=True, slots=True)
class BlobDescriptor:
    """A blob an image manifest names, with the size the manifest gives for it."""

    digest: Digest
    size: int | None


def image_blobs(data: bytes) -> list[BlobDescriptor]:
    """The config and layers of an image manifest, each once (malformed entries skipped).

    Used to prefetch: the sizes only plan the download, the digest is what gets verified.
    """
    document = _load(data) or {}
    layers = document.get("layers")
    entries = [document.get("config"), *(layers if isinstance(layers, list) else [])]
    found: dict[str, BlobDescriptor] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        try:
            digest = Digest.parse(entry["digest"])
        except RegistryError:
            continue
        size = entry.get("size")
        valid_size = isinstance(size, int) and not isinstance(size, bool) and size >= 0
        found.setdefault(digest.hex, BlobDescriptor(digest, size if valid_size else None))
    return list(found.values())


def _descriptors(value: object) -> list[dict[str, Any]]:
    """The entries of a descriptor list that have a digest (others are skipped, never trusted)."""
    if not isinstance(value, list):
        return []
    return [d for d in value if isinstance(d, dict) and isinstance(d.get("digest"), str)]
