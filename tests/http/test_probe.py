"""The probe image (proxy.registry.probe): constant bytes, served for any tag, by the proxy
alone: no upstream request, no cache entry, no hit or miss counted, no repository rule."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.registry import probe
from proxy.registry.policy import parse_repository_patterns

# The index every instance of every version serves: change the bytes and fleets that run two
# versions during a deploy would disagree on the digest a tag names.
INDEX_DIGEST = "sha256:1ceecbfb3539e415872a1fdc47b6e2802c5c50fc336098d8b2a243713a4f3d2c"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_probe_bytes_are_constant_and_consistent() -> None:
    assert probe.INDEX.digest == INDEX_DIGEST == sha256(probe.INDEX.data)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(probe.LAYER))) as tar:
        [member] = tar.getmembers()
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert (member.name, extracted.read()) == ("registry-proxy-probe", probe.LAYER_TEXT)
    index = json.loads(probe.INDEX.data)
    platforms = {
        (m["platform"]["architecture"], m["platform"].get("variant")) for m in index["manifests"]
    }
    assert platforms == set(probe.PLATFORMS)
    for entry in index["manifests"]:
        manifest = probe.manifest(None, entry["digest"])
        assert manifest is not None and sha256(manifest.data) == entry["digest"]
        document = json.loads(manifest.data)
        for descriptor in (document["config"], *document["layers"]):
            blob = probe.blob(descriptor["digest"])
            assert blob is not None and sha256(blob.data) == descriptor["digest"]
            assert len(blob.data) == descriptor["size"]
        config = probe.blob(document["config"]["digest"])
        assert config is not None
        diff_ids = json.loads(config.data)["rootfs"]["diff_ids"]
        assert diff_ids == [sha256(gzip.decompress(probe.LAYER))]


async def test_probe_is_served_for_any_tag_without_the_upstream(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub)
    for query in ("", "?ns=docker.io"):
        for tag in ("pull-0123abcd", "build-ffee", "latest"):
            head = await client.head(
                f"/v2/registry-proxy/probe/manifests/{tag}{query}", headers=ACCEPT_ALL
            )
            assert head.status == 200
            assert head.headers["Docker-Content-Digest"] == INDEX_DIGEST
            assert head.headers["Content-Type"] == probe.OCI_INDEX
            assert int(head.headers["Content-Length"]) == len(probe.INDEX.data)
        index = await client.get(f"/v2/registry-proxy/probe/manifests/{INDEX_DIGEST}{query}")
        assert await index.read() == probe.INDEX.data
        for entry in json.loads(probe.INDEX.data)["manifests"]:
            found = await client.get(f"/v2/registry-proxy/probe/manifests/{entry['digest']}{query}")
            manifest = await found.read()
            assert found.headers["Content-Type"] == probe.OCI_MANIFEST
            layer_digest = json.loads(manifest)["layers"][0]["digest"]
            layer = await client.get(f"/v2/registry-proxy/probe/blobs/{layer_digest}{query}")
            assert (layer.status, await layer.read()) == (200, probe.LAYER)
    assert fakehub.requests == [], "the probe asked the upstream"
    metrics = await (await client.get("/metrics")).text()
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("registry_proxy_cache_total{") and not line.endswith(" 0.0")
    ]
    assert counted == [], counted


async def test_probe_ignores_repository_rules_but_only_stands_for_docker_hub(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub, allow_repositories=parse_repository_patterns("library/*"))
    allowed = await client.head("/v2/registry-proxy/probe/manifests/x", headers=ACCEPT_ALL)
    assert allowed.status == 200  # a proxy that allows only library/* still proves itself
    other = await client.head("/v2/registry-proxy/probe/manifests/x?ns=ghcr.io", headers=ACCEPT_ALL)
    assert other.status != 200  # not Docker Hub: an ordinary request, refused here
    assert fakehub.requests == []


async def test_unknown_probe_digests_are_not_found(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub)
    unknown = "sha256:" + "0" * 64
    manifest = await client.get(f"/v2/registry-proxy/probe/manifests/{unknown}")
    assert manifest.status == 404
    assert (await manifest.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    blob = await client.get(f"/v2/registry-proxy/probe/blobs/{unknown}")
    assert blob.status == 404
    assert (await blob.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    bad = await client.get("/v2/registry-proxy/probe/manifests/not:a/tag")
    assert bad.status in (400, 404)
    assert fakehub.requests == []
