"""Storage keys, built only from values the grammar (``proxy.registry.reference``) validated.

    blobs/sha256/<2 hex>/<64 hex>             blob bytes (shared by every repository)
    manifests/sha256/<2 hex>/<64 hex>         manifest bytes, with their media type
    tags/<upstream>/<repository>/_tag/<tag>   JSON TagRecord
    referrers/<upstream>/<repository>/_referrers/<64 hex>   JSON: a subject's referrers index
    links/<upstream>/<repository>/_link/<64 hex>   empty: the content may be served under the
                                                   repository (see proxy.cache.links)
    links/<upstream>/<repository>/_refs/<64 hex>   written by earlier versions; garbage now

``_tag`` (``_referrers``, ``_link``, ``_refs``) cannot be a repository path component (those
start with [a-z0-9]), so a repository ``a/b`` with tag ``c`` never collides with a repository
``a/b/c``.
"""

from __future__ import annotations

import functools

from proxy.registry.reference import Digest

BLOBS = "blobs/sha256/"
MANIFESTS = "manifests/sha256/"
TAGS = "tags/"
REFERRERS = "referrers/"
LINKS = "links/"
# The keys of a warm request are built again and again from the same strings (names and tags
# memoized by the route, digests held by cached manifests): remembered instead.
KEY_MEMO = 4096


def blob_key(digest: Digest) -> str:
    return f"{BLOBS}{digest.hex[:2]}/{digest.hex}"


def manifest_key(digest: Digest) -> str:
    return _manifest_key(digest.hex)


@functools.lru_cache(maxsize=KEY_MEMO)
def _manifest_key(hex_digest: str) -> str:
    return f"{MANIFESTS}{hex_digest[:2]}/{hex_digest}"


@functools.lru_cache(maxsize=KEY_MEMO)
def tag_key(upstream_host: str, name: str, tag: str) -> str:
    host = upstream_host.replace(":", "_")
    return f"{TAGS}{host}/{name}/_tag/{tag}"


def referrers_key(upstream_host: str, name: str, subject: Digest) -> str:
    host = upstream_host.replace(":", "_")
    return f"{REFERRERS}{host}/{name}/_referrers/{subject.hex}"


def link_key(upstream_host: str, name: str, digest: Digest) -> str:
    return _link_key(upstream_host, name, digest.hex)


@functools.lru_cache(maxsize=KEY_MEMO)
def _link_key(upstream_host: str, name: str, hex_digest: str) -> str:
    host = upstream_host.replace(":", "_")
    return f"{LINKS}{host}/{name}/_link/{hex_digest}"
