"""proxy/cache/keys.py: every key is a valid storage key, each kind lives under its own prefix,
and no repository's keys can collide with another's (``a/b`` with tag ``c`` is not ``a/b/c``)."""

from __future__ import annotations

from proxy.cache.keys import blob_key, link_key, manifest_key, referrers_key, tag_key
from proxy.registry.reference import Digest
from proxy.storage.base import check_key

DIGEST = Digest.of(b"some bytes")


def test_keys_are_storage_keys_under_their_kinds_prefix() -> None:
    hex_digest = DIGEST.hex
    keys = {
        blob_key(DIGEST): f"blobs/sha256/{hex_digest[:2]}/{hex_digest}",
        manifest_key(DIGEST): f"manifests/sha256/{hex_digest[:2]}/{hex_digest}",
        tag_key("docker.io", "library/golang", "1.22"): "tags/docker.io/library/golang/_tag/1.22",
        referrers_key("ghcr.io", "o/r", DIGEST): f"referrers/ghcr.io/o/r/_referrers/{hex_digest}",
        link_key("docker.io", "library/golang", DIGEST): (
            f"links/docker.io/library/golang/_link/{hex_digest}"
        ),
    }
    for made, expected in keys.items():
        assert made == expected
        assert check_key(made) == made


def test_a_port_in_the_upstream_host_makes_a_valid_key() -> None:
    key = tag_key("registry.local:5000", "team/app", "v1")
    assert key == "tags/registry.local_5000/team/app/_tag/v1"
    assert check_key(key) == key
    assert check_key(link_key("registry.local:5000", "team/app", DIGEST))


def test_a_tag_never_collides_with_a_longer_repository() -> None:
    """Repository path components start with [a-z0-9]: ``_tag`` can never be one."""
    assert tag_key("docker.io", "a/b", "c") != tag_key("docker.io", "a/b/c", "c")
    assert not tag_key("docker.io", "a/b/c", "d").startswith(tag_key("docker.io", "a/b", "c"))
