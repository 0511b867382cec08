"""The probe image through the app: served for any tag, by the proxy alone: no upstream request,
no cache entry, no hit or miss counted, no repository rule. Its bytes:
tests/unit/registry/test_probe.py."""

from __future__ import annotations

import json

from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.registry import probe
from proxy.registry.policy import parse_repository_patterns


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
            assert head.headers["Docker-Content-Digest"] == probe.INDEX.digest
            assert head.headers["Content-Type"] == probe.OCI_INDEX
            assert int(head.headers["Content-Length"]) == len(probe.INDEX.data)
        index = await client.get(f"/v2/registry-proxy/probe/manifests/{probe.INDEX.digest}{query}")
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
