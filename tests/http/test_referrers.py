"""OCI 1.1 referrers through the proxy, against an upstream that implements the API (the fake hub
with ``referrers_api=True``) and one that does not (the fallback tag schema); artifact manifests
with ``subject`` and ``artifactType`` served byte-exact."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from support.clock import use_clock
from support.fakehub import OCI_INDEX, FakeHub
from support.proxy_app import ACCEPT_ALL, Client, ProxyFactory

from proxy.registry.manifest import OCI_ARTIFACT_MANIFEST
from proxy.registry.policy import parse_tag_ttl_rules

SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"

HubFactory = Callable[..., Awaitable[FakeHub]]


async def referrers(client: Client, path: str) -> tuple[int, dict[str, str], bytes]:
    response = await client.get(path)
    return response.status, dict(response.headers), await response.read()


async def test_referrers_are_passed_through_and_cached_like_a_tag(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(referrers_api=True)
    image = hub.add_image("library/golang", "1.22", oci=True)
    signature = hub.add_artifact("library/golang", image.digest, SIGNATURE, b"sig")
    client = await make_proxy(hub, tag_ttl=300, tag_ttl_rules=parse_tag_ttl_rules("*:sha256-*=60"))
    clock = use_clock(client)
    path = f"/v2/library/golang/referrers/{image.digest}"
    status, headers, body = await referrers(client, path)
    assert status == 200
    assert headers["Content-Type"] == OCI_INDEX
    assert "OCI-Filters-Applied" not in headers
    [listed] = json.loads(body)["manifests"]
    assert listed["digest"] == signature.digest and listed["artifactType"] == SIGNATURE
    assert hub.count("GET", "/referrers/", status=200) == 1

    clock.advance(59)  # within the TTL of the tag sha256-<hex> (the rule above): no request
    assert (await referrers(client, path))[2] == body
    assert hub.count("GET", "/referrers/", status=200) == 1

    sbom = hub.add_artifact("library/golang", image.digest, SBOM, b"{}")
    clock.advance(2)
    status, _, body = await referrers(client, path)
    assert {d["digest"] for d in json.loads(body)["manifests"]} == {signature.digest, sbom.digest}
    assert hub.count("GET", "/referrers/", status=200) == 2


async def test_artifact_type_filter_is_applied_by_the_proxy(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(referrers_api=True)
    image = hub.add_image("library/golang", "1.22", oci=True)
    signature = hub.add_artifact("library/golang", image.digest, SIGNATURE, b"sig")
    sbom = hub.add_artifact("library/golang", image.digest, SBOM, b"{}")
    client = await make_proxy(hub)
    path = f"/v2/library/golang/referrers/{image.digest}"
    for artifact_type, expected in ((SIGNATURE, signature), (SBOM, sbom)):
        query = urlencode({"artifactType": artifact_type})  # '+' must be sent as %2B
        status, headers, body = await referrers(client, f"{path}?{query}")
        assert status == 200
        assert headers["OCI-Filters-Applied"] == "artifactType"
        assert [d["digest"] for d in json.loads(body)["manifests"]] == [expected.digest]
    status, headers, body = await referrers(client, f"{path}?artifactType=application/none")
    assert json.loads(body)["manifests"] == []
    # One upstream request served every filter (the whole list is cached once).
    assert hub.count("GET", "/referrers/", status=200) == 1
    assert all("artifactType" not in r.query for r in hub.matching("GET", "/referrers/"))


async def test_no_referrers_is_an_empty_index(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(referrers_api=True)
    image = hub.add_image("library/golang", "1.22", oci=True)
    client = await make_proxy(hub)
    status, _, body = await referrers(client, f"/v2/golang/referrers/{image.digest}")
    assert status == 200
    assert json.loads(body) == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


async def test_a_paged_list_is_served_whole(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(referrers_api=True, referrers_page_size=2)
    image = hub.add_image("library/golang", "1.22", oci=True)
    made = {
        hub.add_artifact("library/golang", image.digest, SIGNATURE, bytes([n])).digest
        for n in range(5)
    }
    client = await make_proxy(hub)
    status, headers, body = await referrers(client, f"/v2/golang/referrers/{image.digest}")
    assert status == 200 and "Link" not in headers
    assert {d["digest"] for d in json.loads(body)["manifests"]} == made
    assert hub.count("GET", "/referrers/", status=200) == 3


async def test_stale_referrers_on_upstream_failure(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(referrers_api=True)
    image = hub.add_image("library/golang", "1.22", oci=True)
    hub.add_artifact("library/golang", image.digest, SIGNATURE, b"sig")
    client = await make_proxy(hub, tag_ttl=60)
    clock = use_clock(client)
    path = f"/v2/library/golang/referrers/{image.digest}"
    _, _, first = await referrers(client, path)
    clock.advance(61)
    hub.inject("status", status=503, path_contains="/referrers/")
    status, headers, body = await referrers(client, path)
    assert status == 200 and body == first
    assert headers["Warning"] == '110 registry-proxy "served from cache: upstream answered 503"'
    # Nothing cached for another subject: the failure is passed on.
    other = f"/v2/library/golang/referrers/sha256:{'b' * 64}"
    assert (await referrers(client, other))[0] == 503


async def test_without_the_api_upstream_the_client_falls_back_to_the_tag_schema(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(referrers_api=False)  # Docker Hub, distribution 2.8
    image = hub.add_image("library/golang", "1.22", oci=True)
    hex_ = image.digest.removeprefix("sha256:")
    signature = hub.add_artifact(
        "library/golang", image.digest, SIGNATURE, b"sig", tag=f"sha256-{hex_}.sig"
    )
    client = await make_proxy(hub, negative_ttl=30)
    clock = use_clock(client)

    # 1. The referrers API: 404, as a registry without it must answer; remembered.
    path = f"/v2/library/golang/referrers/{image.digest}"
    for _ in range(3):
        assert (await referrers(client, path))[0] == 404
    assert hub.count("GET", "/referrers/") == 1

    # 2. The fallback tag of the referrers schema (not pushed here): 404, remembered.
    for _ in range(3):
        response = await client.get(
            f"/v2/library/golang/manifests/sha256-{hex_}", headers=ACCEPT_ALL
        )
        assert response.status == 404
    assert hub.count(path_contains=f"/manifests/sha256-{hex_}", status=404) == 1

    # 3. cosign's signature tag: found, byte-exact, with its subject and artifactType.
    response = await client.get(
        f"/v2/library/golang/manifests/sha256-{hex_}.sig", headers=ACCEPT_ALL
    )
    assert response.status == 200
    assert await response.read() == signature.manifest
    assert response.headers["Content-Type"] == signature.media_type
    assert response.headers["Docker-Content-Digest"] == signature.digest
    document = json.loads(signature.manifest)
    assert document["subject"]["digest"] == image.digest
    for blob in signature.blob_digests:
        blob_response = await client.get(f"/v2/library/golang/blobs/{blob}")
        assert blob_response.status == 200
        await blob_response.read()

    # After the negative TTL the API is asked again (an upstream may have gained it).
    clock.advance(31)
    assert (await referrers(client, path))[0] == 404
    assert hub.count("GET", "/referrers/") == 2


async def test_artifact_manifests_round_trip_byte_exact(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    image = fakehub.add_image("library/golang", "1.22", oci=True)
    artifact = fakehub.add_artifact(
        "library/golang",
        image.digest,
        SIGNATURE,
        b"sig",
        media_type=OCI_ARTIFACT_MANIFEST,
        tag="artifact",
        annotations={"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    )
    client = await make_proxy(fakehub)
    for reference in ("artifact", artifact.digest):
        for method in ("GET", "HEAD"):
            response = await client.request(
                method, f"/v2/library/golang/manifests/{reference}", headers=ACCEPT_ALL
            )
            assert response.status == 200, (reference, await response.text())
            assert response.headers["Content-Type"] == OCI_ARTIFACT_MANIFEST
            assert response.headers["Docker-Content-Digest"] == artifact.digest
            if method == "GET":
                assert await response.read() == artifact.manifest


async def test_an_invalid_subject_is_400(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    client = await make_proxy(fakehub)
    for subject in ("latest", "sha256:xyz", f"sha512:{'a' * 128}"):
        response = await client.get(f"/v2/library/golang/referrers/{subject}")
        assert response.status == 400
    assert fakehub.count(server=None) == 0
