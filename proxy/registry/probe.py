"""The probe image: one tiny image the proxy serves itself, under a name no other registry has.

A build proves that its Docker daemon (and the daemon's BuildKit) pulls Docker Hub images
through the proxy by pulling ``registry-proxy/probe:<random tag>`` through its mirror
(docs/clients/use-registry-mirror.sh). Docker Hub namespaces are 4 to 30 lowercase letters and
digits, so ``registry-proxy`` can never exist there: a pull of that name can only succeed
through the proxy, and a random tag defeats any local cache. It costs no upstream request and
no quota, and is never cached or counted as a hit or a miss; it is logged like any request.

The image answers under every tag, and its bytes are constants (the layer is stored below as
bytes, the JSON documents are serialized canonically): the HEAD by tag and the GETs by digest of
one pull may land on different instances of a fleet, and every instance must name the same
digests. It is an OCI index with one image per common Linux platform, each a config and one
layer holding a single small file (``/registry-proxy-probe``): some clients refuse an image
with no layers.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Any

REPOSITORY = "registry-proxy/probe"
# Docker Hub is the only upstream the probe stands for (``?ns=docker.io`` or no ``ns``).
NAMESPACES = (None, "docker.io")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# A tar (10240 bytes) of one file, ``registry-proxy-probe``, mode 0644, owner 0:0, mtime 0, gzip
# level 9 with mtime 0. Kept as bytes, not made at start-up: another zlib could compress the
# same tar differently, and every instance must serve the same digest.
LAYER = base64.b64decode(
    "H4sIAAAAAAACA+3SSwrCMBSF4Yxdxd2AkkpRcB1uIKWxCUQqeYjdvSEDRcfqxP8b3HMICXeSaCefclzWlzjf2hys+jBd"
    "7fq+ZfWeuuufvZ13W93tlWj1AyVlE+t69Z+OzifxZzNZqSXZeLWjDIvEl38hPicbTgcxMhQfRsnOZLmUEOpt/2jZxbl"
    "MrqaV9m6zUgAAAAAAAAAAAAAAAACAr7gDJFfVnAAoAAA="
)
LAYER_TEXT = (
    b"This image is served by registry-proxy itself: a build that pulled it pulled through the"
    b" proxy.\n"
)
PLATFORMS: tuple[tuple[str, str | None], ...] = (
    ("amd64", None),
    ("arm64", "v8"),
    ("arm", "v7"),
    ("386", None),
    ("ppc64le", None),
    ("s390x", None),
    ("riscv64", None),
)


@dataclass(frozen=True, slots=True)
class ProbeObject:
    media_type: str
    data: bytes
    digest: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(obj: ProbeObject, **extra: Any) -> dict[str, Any]:
    return {"mediaType": obj.media_type, "digest": obj.digest, "size": len(obj.data), **extra}


def _build() -> tuple[ProbeObject, dict[str, ProbeObject], dict[str, ProbeObject]]:
    layer = ProbeObject(OCI_LAYER_GZIP, LAYER, _digest(LAYER))
    diff_id = _digest(gzip.decompress(LAYER))
    manifests: dict[str, ProbeObject] = {}
    blobs = {layer.digest: layer}
    entries = []
    for architecture, variant in PLATFORMS:
        platform = {"architecture": architecture, "os": "linux"}
        if variant is not None:
            platform["variant"] = variant
        config_document: dict[str, Any] = {
            **platform,
            "config": {"Labels": {"org.opencontainers.image.title": REPOSITORY}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        config_bytes = _canonical(config_document)
        config = ProbeObject(OCI_CONFIG, config_bytes, _digest(config_bytes))
        manifest_bytes = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": _descriptor(config),
                "layers": [_descriptor(layer)],
            }
        )
        manifest = ProbeObject(OCI_MANIFEST, manifest_bytes, _digest(manifest_bytes))
        blobs[config.digest] = config
        manifests[manifest.digest] = manifest
        entries.append(_descriptor(manifest, platform=platform))
    index_bytes = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    index = ProbeObject(OCI_INDEX, index_bytes, _digest(index_bytes))
    manifests[index.digest] = index
    return index, manifests, blobs


INDEX, _MANIFESTS, _BLOBS = _build()


def is_probe(name: str, namespace: str | None) -> bool:
    """Whether a request names the probe (``registry-proxy/probe``, for Docker Hub)."""
    return name == REPOSITORY and namespace in NAMESPACES


def manifest(tag: str | None, digest: str | None) -> ProbeObject | None:
    """The index under any tag; the index or a platform's manifest by digest; else None."""
    if digest is None:
        return INDEX if tag is not None else None
    return _MANIFESTS.get(digest)


def blob(digest: str) -> ProbeObject | None:
    """A config or the layer, by digest; None for any other digest."""
    return _BLOBS.get(digest)
