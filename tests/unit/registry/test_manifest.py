"""Manifests (``proxy.registry.manifest``): index platform selection (which entries of an index
count, and which manifest a client that cannot read an index gets), and which blobs an image
manifest names (what a prefetch fetches).

Index bytes come from the upstream: an entry that is not well formed is skipped, never trusted;
the default platform is linux/amd64 (as distribution serves), and only in a media type the
client accepts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.registry.manifest import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    default_platform_digest,
    image_blobs,
    platform_manifests,
)
from proxy.registry.reference import Digest

AMD64 = "sha256:" + "a" * 64
ARM64 = "sha256:" + "b" * 64
ATTESTATION = "sha256:" + "c" * 64
OTHER = "sha256:" + "d" * 64


def entry(digest: str, platform: Any, media_type: Any = OCI_MANIFEST) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": 100, "platform": platform}


def index(*entries: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


BUILDKIT_INDEX = index(
    entry(ARM64, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    entry(AMD64, {"os": "linux", "architecture": "amd64"}),
    entry(ATTESTATION, {"os": "unknown", "architecture": "unknown"}),
)


def test_platform_entries_in_order_with_labels() -> None:
    entries = platform_manifests(BUILDKIT_INDEX)
    assert [(e.digest, e.label, e.is_attestation) for e in entries] == [
        (ARM64, "linux/arm64/v8", False),
        (AMD64, "linux/amd64", False),
        (ATTESTATION, "unknown/unknown", True),
    ]
    assert all(e.media_type == OCI_MANIFEST for e in entries)


def test_malformed_entries_are_skipped_or_emptied() -> None:
    entries = platform_manifests(
        index(
            "not an object",
            {"mediaType": OCI_MANIFEST},  # no digest
            {"digest": 42},  # digest not a string
            entry(AMD64, "linux/amd64"),  # platform not an object: no platform
            entry(ARM64, {"os": "linux", "architecture": 64, "variant": None}),
            entry(OTHER, {"os": "linux"}, media_type=["not", "a", "string"]),
        )
    )
    assert [(e.digest, e.platform, e.media_type) for e in entries] == [
        (AMD64, {}, OCI_MANIFEST),
        (ARM64, {"os": "linux"}, OCI_MANIFEST),
        (OTHER, {"os": "linux"}, None),
    ]
    assert entries[0].label == "unknown"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"a string"',
        b"{}",
        b'{"manifests": {"digest": "x"}}',
        b'{"manifests": null}',
    ],
)
def test_what_is_not_an_index_has_no_entries(data: bytes) -> None:
    assert platform_manifests(data) == []
    assert default_platform_digest(data, {OCI_MANIFEST}) is None


def test_the_default_platform_is_linux_amd64() -> None:
    assert default_platform_digest(BUILDKIT_INDEX, {OCI_MANIFEST}) == AMD64


def test_only_in_a_media_type_the_client_accepts() -> None:
    assert default_platform_digest(BUILDKIT_INDEX, {DOCKER_MANIFEST}) is None
    mixed = index(
        entry(OTHER, {"os": "linux", "architecture": "amd64"}, media_type=OCI_MANIFEST),
        entry(AMD64, {"os": "linux", "architecture": "amd64"}, media_type=DOCKER_MANIFEST),
    )
    assert default_platform_digest(mixed, {DOCKER_MANIFEST}) == AMD64
    assert default_platform_digest(mixed, {OCI_MANIFEST, DOCKER_MANIFEST}) == OTHER  # first


def test_no_amd64_no_default() -> None:
    only_arm = index(
        entry(ARM64, {"os": "linux", "architecture": "arm64"}),
        entry(OTHER, {"os": "windows", "architecture": "amd64"}),
        entry(ATTESTATION, {"os": "unknown", "architecture": "unknown"}),
    )
    assert default_platform_digest(only_arm, {OCI_MANIFEST}) is None


def test_an_entry_without_media_type_is_not_chosen() -> None:
    """The client must be able to read what it gets: an unknown type is not known to fit."""
    untyped = index({"digest": AMD64, "platform": {"os": "linux", "architecture": "amd64"}})
    assert default_platform_digest(untyped, {OCI_MANIFEST}) is None


def test_image_blobs_lists_config_and_layers_once_with_their_sizes() -> None:
    config, layer = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    manifest = (
        b'{"config": {"digest": "%s", "size": 7}, "layers": [{"digest": "%s", "size": 9},'
        b' {"digest": "%s", "size": 9}, {"digest": "sha512:00", "size": 1}, {"size": 3},'
        b' {"digest": "%s", "size": "big"}]}'
    ) % (config.encode(), layer.encode(), layer.encode(), ("sha256:" + "c" * 64).encode())
    found = [(str(b.digest), b.size) for b in image_blobs(manifest)]
    assert found == [(config, 7), (layer, 9), ("sha256:" + "c" * 64, None)]
    assert image_blobs(b"not json") == []
    assert image_blobs(b'{"layers": "nope"}') == []
    assert Digest.parse(config).hex == "a" * 64
