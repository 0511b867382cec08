"""Content cached for one repository is not served under another because a manifest lists it
(issue 21, item 1), against distribution with token auth and with skopeo as the client.

The attack: ``attacker/leak:evil`` is a valid image manifest of attacker/leak's own (its config
and layer are in its repository, so distribution accepts the push) that also lists secret/app's
manifest and layer in a field no registry checks (``blobs``, the artifact manifest's list;
distribution 2.8 refuses an image manifest with ``manifests``, the fake hub's test has both).
Once secret/app is cached, a GET of the evil manifest through the proxy must not make
secret/app's content readable under attacker/leak, and ``skopeo copy`` of it must fail, even
while secret/* is refused.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.distribution import Distribution
from support.oci_image import OCI_MANIFEST, Skopeo, SkopeoError
from support.oci_push import RegistryWriter
from support.proxy_process import ProxyProcess

from .conftest import ProxyFactory

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def push_image(
    writer: RegistryWriter, repository: str, tag: str, layer: bytes, **extra: object
) -> tuple[str, bytes, str]:
    """(manifest digest, manifest bytes, layer digest) of a one-layer image pushed upstream."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    config_digest = writer.push_blob(repository, config)
    layer_digest = writer.push_blob(repository, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            **extra,
        },
        indent=2,
    ).encode()
    return writer.push_manifest(repository, tag, manifest, OCI_MANIFEST), manifest, layer_digest


def status_of(proxy: ProxyProcess, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{proxy.url}{path}", headers={"Accept": OCI_MANIFEST})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), error.read()


def test_a_manifest_listing_another_repositorys_content_leaks_nothing(
    proxy_factory: ProxyFactory, upstream: Distribution, skopeo: Skopeo, tmp_path: Path
) -> None:
    writer = RegistryWriter(upstream)
    secret_layer = random.Random(21).randbytes(200_000)
    secret, secret_manifest, secret_layer_digest = push_image(
        writer, "secret/app", "1.0", secret_layer
    )
    victims = [
        {"mediaType": OCI_MANIFEST, "digest": secret, "size": len(secret_manifest)},
        {"mediaType": OCI_LAYER, "digest": secret_layer_digest, "size": len(secret_layer)},
    ]
    evil, evil_manifest, _ = push_image(
        writer,
        "attacker/leak",
        "evil",
        b"the attacker's own layer",
        blobs=victims,
    )

    owner = proxy_factory()
    skopeo.pull_to_dir(f"{owner.host}/secret/app:1.0", tmp_path / "secret")  # cached now
    owner.stop()
    # The same cache, now with secret/* refused.
    attacked = proxy_factory(
        storage=owner.storage, extra_env={"PROXY_DENY_REPOSITORIES": "secret/*"}
    )
    assert skopeo.inspect_raw(f"{attacked.host}/attacker/leak:evil") == evil_manifest
    with pytest.raises(SkopeoError):
        skopeo.pull_to_dir(f"{attacked.host}/attacker/leak@{secret}", tmp_path / "leak")
    with pytest.raises(SkopeoError):
        skopeo.pull_to_dir(f"{attacked.host}/secret/app:1.0", tmp_path / "denied")
    for path in (
        f"/v2/attacker/leak/manifests/{secret}",
        f"/v2/attacker/leak/blobs/{secret_layer_digest}",
    ):
        status, body = status_of(attacked, path)
        assert status == 404 and secret_layer[:100] not in body, path
    # The evil image itself is the attacker's own, and pulls.
    skopeo.pull_to_dir(f"{attacked.host}/attacker/leak:evil", tmp_path / "own")
    assert (tmp_path / "own" / "manifest.json").read_bytes() == evil_manifest
    assert evil.startswith("sha256:")
