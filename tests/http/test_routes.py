"""The read API's HTTP surface: headers, errors, negotiation, tag lists, unsupported methods."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from support.fakehub import DOCKER_MANIFEST, FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.registry.manifest import OCI_INDEX, OCI_MANIFEST
from proxy.storage import StorageError
from proxy.storage.filesystem import FilesystemStorage


async def error_code(response: object) -> str:
    body = await response.json()  # type: ignore[attr-defined]
    code: str = body["errors"][0]["code"]
    return code


async def test_base_endpoint(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    client = await make_proxy(fakehub)
    response = await client.get("/v2/")
    assert response.status == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert fakehub.count(server=None) == 0


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2", 200, None),
        ("HEAD", "/v2/", 200, None),
        ("POST", "/v2", 405, "UNSUPPORTED"),
        # Near /v2 but not under it: the catch-all's registry error, never the API's handler.
        ("GET", "/v2x/library/golang/manifests/latest", 404, "NOT_FOUND"),
        ("GET", "/v20/", 404, "NOT_FOUND"),
        ("GET", "/v2%2Flibrary/golang/manifests/latest", 404, "NOT_FOUND"),
        ("GET", "/V2/", 404, "NOT_FOUND"),
        ("GET", "/", 200, None),  # the status page, for the operator networks (all here)
    ],
)
async def test_the_api_route_takes_v2_and_everything_below_it_only(
    fakehub: FakeHub,
    make_proxy: ProxyFactory,
    method: str,
    path: str,
    status: int,
    code: str | None,
) -> None:
    client = await make_proxy(fakehub)
    response = await client.request(method, path)
    assert response.status == status
    if code is not None:
        assert await error_code(response) == code
    elif path.startswith("/v2"):
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/library/golang/blobs/uploads/"),
        ("PUT", "/v2/library/golang/manifests/latest"),
        ("DELETE", "/v2/library/golang/manifests/latest"),
        ("PATCH", "/v2/library/golang/blobs/uploads/abc"),
        ("GET", "/v2/library/golang/blobs/uploads/abc"),
        ("DELETE", f"/v2/library/golang/blobs/sha256:{'a' * 64}"),
    ],
)
async def test_push_methods_are_unsupported(
    fakehub: FakeHub, make_proxy: ProxyFactory, method: str, path: str
) -> None:
    client = await make_proxy(fakehub)
    response = await client.request(method, path)
    assert response.status == 405
    assert await error_code(response) == "UNSUPPORTED"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/Library/golang/manifests/latest", 400, "NAME_INVALID"),
        # Neither a tag nor a digest: no such manifest (the OCI conformance suite expects 404).
        ("/v2/library/golang/manifests/-bad", 404, "MANIFEST_UNKNOWN"),
        ("/v2/library/golang/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/library/golang/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("/v2/library/golang/blobs/latest", 400, "DIGEST_INVALID"),
        ("/v2/library/a%2Fb/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/nothing/here", 404, "NOT_FOUND"),
        # Tags are resolved with HEAD, whose 404 has no body to tell "no repository" apart.
        ("/v2/library/missing/manifests/latest", 404, "MANIFEST_UNKNOWN"),
        ("/v2/library/missing/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/library/golang/manifests/nosuchtag", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/library/golang/blobs/sha256:{'0' * 64}", 404, "BLOB_UNKNOWN"),
    ],
)
async def test_errors_in_registry_format(
    fakehub: FakeHub, make_proxy: ProxyFactory, path: str, status: int, code: str
) -> None:
    fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    response = await client.get(path, headers=ACCEPT_ALL)
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert await error_code(response) == code
    head = await client.head(path, headers=ACCEPT_ALL)
    assert head.status == status
    assert await head.read() == b""


async def test_manifest_headers_and_bytes(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    for path in ("/v2/library/golang/manifests/1.22", "/v2/golang/manifests/1.22"):
        response = await client.get(path, headers=ACCEPT_ALL)
        assert response.status == 200
        assert await response.read() == image.manifest
        assert response.headers["Content-Type"] == DOCKER_MANIFEST
        assert response.headers["Docker-Content-Digest"] == image.digest
        assert response.headers["Content-Length"] == str(len(image.manifest))
        assert response.headers["ETag"] == f'"{image.digest}"'
        head = await client.head(path, headers=ACCEPT_ALL)
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(image.manifest))
        assert head.headers["Docker-Content-Digest"] == image.digest
        assert await head.read() == b""


async def test_ns_parameter_is_accepted(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    response = await client.get(
        "/v2/library/golang/manifests/1.22?ns=docker.io", headers=ACCEPT_ALL
    )
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == image.digest


async def test_unconfigured_registry_is_refused(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    client = await make_proxy(fakehub)
    for path in ("/v2/ghcr.io/owner/repo/manifests/1", "/v2/owner/repo/manifests/1?ns=quay.io"):
        response = await client.get(path)
        assert response.status == 403
        assert await error_code(response) == "DENIED"
    assert fakehub.count(server=None) == 0


async def test_index_negotiation(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    index = fakehub.add_multiarch_image("library/golang", "multi", oci=True)
    client = await make_proxy(fakehub)
    full = await client.get("/v2/library/golang/manifests/multi", headers=ACCEPT_ALL)
    assert full.headers["Content-Type"] == OCI_INDEX
    assert await full.read() == index.manifest
    # A client that reads only single-image manifests gets the linux/amd64 one.
    single = await client.get(
        "/v2/library/golang/manifests/multi", headers={"Accept": OCI_MANIFEST}
    )
    assert single.status == 200
    assert single.headers["Content-Type"] == OCI_MANIFEST
    amd64 = next(i for i in index.images if i.platform == "linux/amd64")
    assert single.headers["Docker-Content-Digest"] == amd64.digest
    # One that reads neither gets the manifest as stored (nothing can be converted, and a 404
    # would only hide why its pull fails), by tag and by digest, HEAD and GET alike.
    for reference in ("multi", index.digest, amd64.digest):
        for method in ("HEAD", "GET"):
            neither = await client.request(
                method,
                f"/v2/library/golang/manifests/{reference}",
                headers={"Accept": DOCKER_MANIFEST},
            )
            assert neither.status == 200, (method, reference)
            expected = index if reference in ("multi", index.digest) else amd64
            assert neither.headers["Docker-Content-Digest"] == expected.digest
            assert neither.headers["Content-Type"] == expected.media_type


async def test_tags_list_pagination(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    for tag in ("a", "b", "c"):
        fakehub.add_image("library/golang", tag)
    client: TestClient = await make_proxy(fakehub)  # type: ignore[type-arg]
    response = await client.get("/v2/golang/tags/list")
    assert response.status == 200
    assert json.loads(await response.read())["tags"] == ["a", "b", "c"]
    page = await client.get("/v2/golang/tags/list?n=2")
    assert json.loads(await page.read())["tags"] == ["a", "b"]
    assert page.headers["Link"].startswith("</v2/golang/tags/list?")
    rest = await client.get("/v2/golang/tags/list?n=2&last=b")
    assert json.loads(await rest.read())["tags"] == ["c"]
    bad = await client.get("/v2/golang/tags/list?n=abc")
    assert bad.status == 400
    assert await error_code(bad) == "PAGINATION_NUMBER_INVALID"


async def test_health_endpoints(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    client = await make_proxy(fakehub)
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()


class UnreachableStorage(FilesystemStorage):
    """A cache store whose health check fails, as S3 does for every instance at once."""

    async def check(self) -> None:
        raise StorageError("s3: connection refused")


async def test_load_balancer_check_ignores_shared_storage_but_not_the_local_spool(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    storage = UnreachableStorage(tmp_path / "cache")
    client = await make_proxy(fakehub, storage_backend=storage, spool_dir=tmp_path / "spool")
    # S3 trouble: /readyz says so (for people and alarms), the balancer's check does not
    assert (await client.get("/readyz")).status == 503
    local = await client.get("/healthz/local")
    assert local.status == 200
    assert await local.json() == {"status": "ok", "spool": "writable"}
    # this instance's own spool is gone: only its check fails
    shutil.rmtree(tmp_path / "spool")
    (tmp_path / "spool").write_text("not a directory any more")
    broken = await client.get("/healthz/local")
    assert broken.status == 503
    assert (await broken.json())["status"] == "failing"
    assert (await client.get("/healthz")).status == 200


async def test_extra_upstream_by_path_and_by_ns(
    fakehub: FakeHub, fakehub_factory: object, make_proxy: ProxyFactory
) -> None:
    from proxy.config import UpstreamSettings

    other: FakeHub = await fakehub_factory()  # type: ignore[operator]
    hub_image = fakehub.add_image("library/golang", "1")
    other_image = other.add_image("owner/tool", "1", [b"from the other registry"])
    client = await make_proxy(fakehub, extra=(UpstreamSettings("registry.test", other.url),))
    by_path = await client.get("/v2/registry.test/owner/tool/manifests/1", headers=ACCEPT_ALL)
    assert by_path.headers["Docker-Content-Digest"] == other_image.digest
    by_ns = await client.get("/v2/owner/tool/manifests/1?ns=registry.test", headers=ACCEPT_ALL)
    assert by_ns.headers["Docker-Content-Digest"] == other_image.digest
    layer = await client.get(f"/v2/registry.test/owner/tool/blobs/{other_image.layer_digests[0]}")
    assert await layer.read() == other_image.layers[0]
    # Docker Hub stays at the root; docker.io as a prefix or ns is Docker Hub too.
    for path in ("/v2/golang/manifests/1", "/v2/docker.io/library/golang/manifests/1?ns=docker.io"):
        response = await client.get(path, headers=ACCEPT_ALL)
        assert response.headers["Docker-Content-Digest"] == hub_image.digest
    assert (
        fakehub.manifest_gets(repo="owner/tool") == fakehub.manifest_heads(repo="owner/tool") == 0
    )


async def test_readiness_reports_upstream_without_failing_on_it(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub)
    await fakehub.close()
    ready = await client.get("/readyz")
    assert ready.status == 200  # the cache can still serve what it has
    body = await ready.json()
    assert body["storage"] == "ok" and body["upstream"].startswith("unreachable")
    strict = await client.get("/readyz?upstream=required")
    assert strict.status == 503


async def test_request_id_is_echoed_and_logged(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    import structlog

    client = await make_proxy(fakehub)
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/v2/", headers={"X-Request-Id": "trace-123"})
    assert response.headers["X-Request-Id"] == "trace-123"
    generated = await client.get("/v2/")
    assert len(generated.headers["X-Request-Id"]) == 32
    assert any(e.get("request_id") == "trace-123" for e in logs if e["event"] == "request")


async def test_access_log_counts_manifest_bytes(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    import structlog

    image = fakehub.add_image("library/golang", "1.22")
    client = await make_proxy(fakehub)
    with structlog.testing.capture_logs() as logs:
        await (await client.get("/v2/golang/manifests/1.22", headers=ACCEPT_ALL)).read()
        await (await client.head("/v2/golang/manifests/1.22", headers=ACCEPT_ALL)).read()
    lines = [e for e in logs if e["event"] == "request"]
    assert [e["bytes"] for e in lines] == [len(image.manifest), 0]
