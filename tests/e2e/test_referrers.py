"""Signatures through the proxy from a registry without the referrers API (distribution 2.8).

A signature is pushed as an OCI 1.1 artifact (an image manifest with ``artifactType`` and a
``subject``) with plain HTTP requests, and registered as a client must on such a registry: in the
referrers tag schema (an index tagged ``sha256-<hex>``) and, as cosign does, under
``sha256-<hex>.sig``. Through the proxy the referrers API answers 404 (what tells clients to fall
back), the fallback tags and the artifact come back byte-exact with ``skopeo inspect --raw``, and
misses of the probed tags are remembered (negative caching) instead of asked upstream each time.
The upstream that implements the API is the fake hub (tests/http/test_referrers.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from support.distribution import Distribution
from support.oci_image import OCI_INDEX, PushedImage, Skopeo
from support.oci_push import RegistryWriter
from support.proxy_process import ProxyProcess

from .conftest import ProxyFactory

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

REPOSITORY = "library/golang"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def request(proxy: ProxyProcess, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"{proxy.url}{path}", method=method)
    req.add_header("Accept", f"{OCI_INDEX}, application/vnd.oci.image.manifest.v1+json")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return int(response.status), headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_a_signature_is_found_through_the_tag_schema_fallback(
    proxy_factory: ProxyFactory,
    upstream: Distribution,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
) -> None:
    image = golang_images["oci"]
    subject, subject_hex = image.index_digest, image.index_digest.removeprefix("sha256:")
    writer = RegistryWriter(upstream)
    signature = writer.push_artifact(
        REPOSITORY,
        subject,
        image.index_media_type,
        len(image.index_bytes),
        SIGNATURE,
        b'{"critical": {"identity": "test"}}',
        tag=f"sha256-{subject_hex}.sig",
    )
    referrers_index = writer.push_referrers_tag(REPOSITORY, subject, [signature])
    proxy = proxy_factory(extra_env={"PROXY_NEGATIVE_TTL": "300"})
    mark = upstream.mark()

    # The referrers API: distribution 2.8 has none, so neither has the proxy: 404, remembered.
    for _ in range(3):
        status, _, _ = request(proxy, "GET", f"/v2/{REPOSITORY}/referrers/{subject}")
        assert status == 404
    upstream.sync()
    assert upstream.count("GET", r"/referrers/", since=mark) == 1

    # The fallback: the referrers tag's index, and the artifact it lists, byte-exact.
    listed = skopeo.inspect_raw(f"{proxy.host}/{REPOSITORY}:sha256-{subject_hex}")
    assert listed == referrers_index
    [descriptor] = json.loads(listed)["manifests"]
    assert descriptor["artifactType"] == SIGNATURE
    artifact = skopeo.inspect_raw(f"{proxy.host}/{REPOSITORY}@{descriptor['digest']}")
    assert artifact == signature.manifest
    assert json.loads(artifact)["subject"]["digest"] == subject
    # cosign's own tag for it, and the signature payload.
    assert skopeo.inspect_raw(f"{proxy.host}/{REPOSITORY}:sha256-{subject_hex}.sig") == artifact
    layer = json.loads(artifact)["layers"][0]["digest"]
    status, _, payload = request(proxy, "GET", f"/v2/{REPOSITORY}/blobs/{layer}")
    assert (status, payload) == (200, b'{"critical": {"identity": "test"}}')

    # Probes for what was never pushed (an attestation) go upstream once, then are remembered.
    mark = upstream.mark()
    for method in ("HEAD", "GET", "HEAD"):
        status, _, _ = request(
            proxy, method, f"/v2/{REPOSITORY}/manifests/sha256-{subject_hex}.att"
        )
        assert status == 404
    upstream.sync()
    assert (
        upstream.count(None, rf"/manifests/sha256-{subject_hex}\.att$", since=mark, status=404) == 1
    )
