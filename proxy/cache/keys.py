"""Storage keys, built only from values the grammar in ``proxy.reference`` already validated.

    blobs/sha256/<2 hex>/<64 hex>             blob bytes (shared by every repository)
    manifests/sha256/<2 hex>/<64 hex>         manifest bytes, with their media type
    tags/<upstream>/<repository>/_tag/<tag>   JSON TagRecord

``_tag`` cannot be a repository path component (those start with [a-z0-9]), so a repository
``a/b`` with tag ``c`` never collides with a repository ``a/b/c``.
"""

from __future__ import annotations

from proxy.reference import Digest

BLOBS = "blobs/sha256/"
MANIFESTS = "manifests/sha256/"
TAGS = "tags/"


def blob_key(digest: Digest) -> str:
    return f"{BLOBS}{digest.hex[:2]}/{digest.hex}"


def manifest_key(digest: Digest) -> str:
    return f"{MANIFESTS}{digest.hex[:2]}/{digest.hex}"


def tag_key(upstream_host: str, name: str, tag: str) -> str:
    host = upstream_host.replace(":", "_")
    return f"{TAGS}{host}/{name}/_tag/{tag}"
