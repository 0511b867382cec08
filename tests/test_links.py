"""Cached content belongs to repositories: a blob (or manifest) cached for one repository is served
under another only when that one holds it too: its own manifest references it, or the upstream
confirms it with a HEAD."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ProxyFactory
from support.fakehub import FakeHub
from support.moto import MotoServer

from proxy.config import StorageLocation, UpstreamSettings
from proxy.http.routes import SERVICES
from proxy.registry.manifest import MANIFEST_TYPES

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_TYPES)}
SHARED = b"a base layer both images have"

Client = TestClient[web.Request, web.Application]
HubFactory = Callable[..., Awaitable[FakeHub]]


async def get(client: Client, path: str) -> tuple[int, bytes]:
    response = await client.get(path, headers=ACCEPT_ALL)
    return response.status, await response.read()


def cache_root(client: Client) -> Path:
    path = client.app[SERVICES].settings.storage.location.path
    assert path is not None
    return path


async def test_a_blob_cached_for_one_repository_is_not_served_under_another(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("myorg/private", "1.0", [b"secret layer"])
    hub.add_image("library/golang", "1.0")
    client = await make_proxy(hub, negative_ttl=30)
    layer = image.layer_digests[0]
    assert await get(client, f"/v2/myorg/private/blobs/{layer}") == (200, b"secret layer")
    hub.reset_counts()

    for method in ("GET", "HEAD", "GET"):
        response = await client.request(method, f"/v2/library/golang/blobs/{layer}")
        assert response.status == 404
        assert b"secret" not in await response.read()
    assert hub.blob_heads(layer) - hub.count("HEAD", layer, status=401) == 1  # then remembered
    assert hub.blob_gets(layer) == hub.cdn_gets(layer) == 0


async def test_a_blob_referenced_by_the_repositorys_manifest_needs_no_upstream_request(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    first = hub.add_image("library/golang", "1.0", [SHARED])
    second = hub.add_image("myorg/app", "1.0", [SHARED, b"app layer"])
    client = await make_proxy(hub)
    shared = first.layer_digests[0]
    assert shared == second.layer_digests[0]
    assert await get(client, f"/v2/library/golang/blobs/{shared}") == (200, SHARED)
    status, _ = await get(client, "/v2/myorg/app/manifests/1.0")
    assert status == 200
    hub.reset_counts()
    assert await get(client, f"/v2/myorg/app/blobs/{shared}") == (200, SHARED)
    head = await client.head(f"/v2/myorg/app/blobs/{shared}")
    assert head.status == 200 and head.content_length == len(SHARED)
    assert hub.count(server=None) == 0


async def test_a_blob_the_upstream_confirms_is_served_from_the_cache(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    first = hub.add_image("library/golang", "1.0", [SHARED])
    hub.add_image("myorg/app", "1.0", [SHARED])
    client = await make_proxy(hub)
    shared = first.layer_digests[0]
    assert await get(client, f"/v2/library/golang/blobs/{shared}") == (200, SHARED)
    hub.reset_counts()
    # No manifest of myorg/app is cached: one HEAD on myorg/app asks, the bytes come from cache.
    for _ in range(3):
        assert await get(client, f"/v2/myorg/app/blobs/{shared}") == (200, SHARED)
    assert hub.count("HEAD", f"myorg/app/blobs/{shared}", status=200) == 1
    assert hub.blob_gets() == hub.cdn_gets() == 0


async def test_links_are_shared_through_storage(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    first = hub.add_image("library/golang", "1.0", [SHARED])
    hub.add_image("myorg/app", "1.0", [SHARED])
    one = await make_proxy(hub)
    shared = first.layer_digests[0]
    assert await get(one, f"/v2/library/golang/blobs/{shared}") == (200, SHARED)
    assert await get(one, f"/v2/myorg/app/blobs/{shared}") == (200, SHARED)
    hub.reset_counts()
    # Another instance on the same storage knows both links without asking anyone.
    two = await make_proxy(hub, location=one.app[SERVICES].settings.storage.location)
    assert await get(two, f"/v2/library/golang/blobs/{shared}") == (200, SHARED)
    assert await get(two, f"/v2/myorg/app/blobs/{shared}") == (200, SHARED)
    assert hub.count(server=None) == 0


async def test_links_are_shared_by_instances_on_one_s3_bucket(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory, moto_endpoint: MotoServer
) -> None:
    hub = await fakehub_factory(strict_blobs=True)
    first = hub.add_image("library/golang", "1.0", [SHARED])
    hub.add_image("myorg/app", "1.0", [SHARED, b"app layer"])
    s3 = {
        "location": StorageLocation(bucket=moto_endpoint.create_bucket(), prefix="cache"),
        "s3_endpoint_url": moto_endpoint.endpoint_url,
    }
    one = await make_proxy(hub, **s3)
    shared = first.layer_digests[0]
    assert await get(one, f"/v2/library/golang/blobs/{shared}") == (200, SHARED)
    assert (await get(one, "/v2/myorg/app/manifests/1.0"))[0] == 200
    hub.reset_counts()
    two = await make_proxy(hub, **s3)
    assert await get(two, f"/v2/myorg/app/blobs/{shared}") == (200, SHARED)
    assert await get(two, f"/v2/library/golang/blobs/{shared}") == (200, SHARED)
    assert hub.count(server=None) == 0
    # And what neither instance linked is still refused by both.
    hub.add_image("other/repo", "1.0")
    for client in (one, two):
        assert (await get(client, f"/v2/other/repo/blobs/{shared}"))[0] == 404


async def test_a_private_upstreams_blob_is_not_readable_under_a_public_name(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    public: FakeHub = await fakehub_factory(strict_blobs=True)
    private: FakeHub = await fakehub_factory(
        strict_blobs=True, users={"bot": "pw"}, allow_anonymous=False
    )
    public.add_image("library/golang", "1.0")
    image = private.add_image("company/secret", "1.0", [b"private bytes"])
    client = await make_proxy(
        public,
        extra=(UpstreamSettings("ghcr.io", private.url, "bot", "pw"),),
    )
    layer = image.layer_digests[0]
    assert await get(client, f"/v2/ghcr.io/company/secret/blobs/{layer}") == (
        200,
        b"private bytes",
    )
    for path in (
        f"/v2/library/golang/blobs/{layer}",
        f"/v2/golang/blobs/{layer}?ns=docker.io",
        f"/v2/ghcr.io/company/other/blobs/{layer}",
    ):
        status, body = await get(client, path)
        assert status == 404 and b"private" not in body, path


async def test_a_manifest_cached_for_one_repository_is_not_served_under_another(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("myorg/private", "1.0")
    hub.add_image("library/golang", "1.0")
    client = await make_proxy(hub)
    assert (await get(client, "/v2/myorg/private/manifests/1.0"))[0] == 200
    for method in ("GET", "HEAD"):
        response = await client.request(
            method, f"/v2/library/golang/manifests/{image.digest}", headers=ACCEPT_ALL
        )
        assert response.status == 404
        assert image.manifest not in await response.read()


async def test_confirmed_manifest_by_digest_is_served_from_cache(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("myorg/private", "1.0")
    hub.add_manifest("library/golang", image.manifest, image.media_type)
    client = await make_proxy(hub)
    assert (await get(client, "/v2/myorg/private/manifests/1.0"))[0] == 200
    hub.reset_counts()
    for _ in range(3):
        assert await get(client, f"/v2/library/golang/manifests/{image.digest}") == (
            200,
            image.manifest,
        )
    assert hub.count("HEAD", f"/manifests/{image.digest}", status=200) == 1
    assert hub.manifest_gets() == 0


async def test_a_client_of_another_repository_does_not_join_a_download_in_flight(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("myorg/private", "1.0", [b"x" * 100_000])
    hub.add_image("library/golang", "1.0")
    client = await make_proxy(hub)
    layer = image.layer_digests[0]
    pause = hub.inject_pause_mid_blob(layer, server="cdn")
    owner = asyncio.create_task(get(client, f"/v2/myorg/private/blobs/{layer}"))
    await pause.wait_hit()
    status, body = await get(client, f"/v2/library/golang/blobs/{layer}")
    assert status == 404 and not body.startswith(b"x")
    pause.release()
    assert await asyncio.wait_for(owner, timeout=10) == (200, b"x" * 100_000)


async def test_a_cache_without_links_heals_from_its_tag_records_even_offline(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    # A cache written before links existed (or whose link writes failed): the tag records
    # still prove which manifests belong where, and serving them links their blobs.
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("library/golang", "1.0")
    first = await make_proxy(hub, tag_ttl=3600)
    assert (await get(first, "/v2/library/golang/manifests/1.0"))[0] == 200
    for blob in image.blob_digests:
        assert (await get(first, f"/v2/library/golang/blobs/{blob}"))[0] == 200
    shutil.rmtree(cache_root(first) / "data" / "links")
    await hub.close()  # and the upstream is gone too

    second = await make_proxy(
        hub, tag_ttl=3600, location=first.app[SERVICES].settings.storage.location
    )
    assert await get(second, "/v2/library/golang/manifests/1.0") == (200, image.manifest)
    for blob, data in zip(image.blob_digests, (image.config, *image.layers), strict=True):
        assert await get(second, f"/v2/library/golang/blobs/{blob}") == (200, data)


async def test_a_client_of_another_repository_does_not_join_a_manifest_fetch(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("myorg/private", "1.0")
    hub.add_image("library/golang", "1.0")
    client = await make_proxy(hub)
    gate = hub.inject_slow_first_byte(method="GET", path_contains=f"/manifests/{image.digest}")
    owner = asyncio.create_task(get(client, f"/v2/myorg/private/manifests/{image.digest}"))
    await gate.wait_hit()
    other = asyncio.create_task(get(client, f"/v2/library/golang/manifests/{image.digest}"))
    await hub.wait_for(lambda: hub.count(path_contains=f"golang/manifests/{image.digest}") > 0)
    gate.release()
    assert await asyncio.wait_for(owner, timeout=10) == (200, image.manifest)
    status, body = await asyncio.wait_for(other, timeout=10)
    assert status == 404 and body != image.manifest
