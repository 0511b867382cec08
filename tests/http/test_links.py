"""Cached content belongs to repositories: a blob (or manifest) cached for one repository is served
under another only when the upstream says that one holds it too: fetched for it, named by its tag,
or confirmed with a HEAD (once per repository and digest, for every instance). What a manifest
lists is never proof (issue 21, item 1)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from support.fakehub import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, FakeHub
from support.moto import MotoServer
from support.proxy_app import ACCEPT_ALL, Client, ProxyFactory, downloads_settled

from proxy.config import StorageLocation, UpstreamSettings
from proxy.http.routes import SERVICES
from proxy.registry.policy import parse_repository_patterns

SHARED = b"a base layer both images have"

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


async def test_a_blob_named_by_the_repositorys_manifest_is_confirmed_once(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    """Its own manifest naming the blob grants nothing (issue 21): one HEAD on the repository
    confirms it, for GET and HEAD alike, and nothing is asked again."""
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
    assert hub.count("HEAD", f"myorg/app/blobs/{shared}", status=200) == 1
    assert hub.blob_gets() == hub.cdn_gets() == hub.manifest_gets() == 0


async def test_a_blob_the_upstream_confirms_is_served_from_the_cache(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    first = hub.add_image("library/golang", "1.0", [SHARED])
    hub.add_image("myorg/app", "1.0", [SHARED])
    client = await make_proxy(hub)
    shared = first.layer_digests[0]
    assert await get(client, f"/v2/library/golang/blobs/{shared}") == (200, SHARED)
    await downloads_settled(client)
    hub.reset_counts()
    # No manifest of myorg/app is cached: one HEAD on myorg/app asks, the bytes come from cache.
    for _ in range(3):
        assert await get(client, f"/v2/myorg/app/blobs/{shared}") == (200, SHARED)
    assert hub.count("HEAD", f"myorg/app/blobs/{shared}", status=200) == 1
    assert hub.blob_gets() == hub.cdn_gets() == 0


async def test_a_client_whose_check_outlasts_the_download_it_joined_gets_every_byte(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    """A client of another repository joins a download in flight; the download ends (verified,
    stored, its first client gone) while the upstream is still confirming the blob for that
    repository. The client took its place in the download before asking, so the spool is kept
    for it and it gets the whole blob (it got an aborted response when it registered after)."""
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    first = hub.add_image("library/golang", "1.0", [SHARED])
    hub.add_image("myorg/app", "1.0", [SHARED])
    client = await make_proxy(hub)
    shared = first.layer_digests[0]
    paused = hub.inject("pause_mid_blob", path_contains=shared, server="cdn", times=1)
    confirming = hub.inject(
        "slow_first_byte", method="HEAD", path_contains=f"myorg/app/blobs/{shared}", times=1
    )
    fetching = asyncio.create_task(get(client, f"/v2/library/golang/blobs/{shared}"))
    await paused.wait_hit()
    joining = asyncio.create_task(get(client, f"/v2/myorg/app/blobs/{shared}"))
    await confirming.wait_hit()
    paused.release()
    assert await fetching == (200, SHARED)
    await downloads_settled(client)
    confirming.release()
    assert await joining == (200, SHARED)
    assert hub.cdn_gets(shared) == 1


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
    await downloads_settled(one)
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
    assert await get(one, f"/v2/myorg/app/blobs/{shared}") == (200, SHARED)  # one HEAD
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
    pause = hub.inject("pause_mid_blob", path_contains=layer, server="cdn")
    owner = asyncio.create_task(get(client, f"/v2/myorg/private/blobs/{layer}"))
    await pause.wait_hit()
    status, body = await get(client, f"/v2/library/golang/blobs/{layer}")
    assert status == 404 and not body.startswith(b"x")
    pause.release()
    assert await asyncio.wait_for(owner, timeout=10) == (200, b"x" * 100_000)


async def test_a_cache_without_links_serves_its_tags_offline_and_confirms_blobs_later(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    # A cache whose link writes failed (or that lost them): the tag records still prove which
    # manifests belong where, even with the upstream down. The blobs its manifests name are
    # served once the upstream confirms them: a manifest's contents prove nothing.
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("library/golang", "1.0")
    first = await make_proxy(hub, tag_ttl=3600)
    assert (await get(first, "/v2/library/golang/manifests/1.0"))[0] == 200
    for blob in image.blob_digests:
        assert (await get(first, f"/v2/library/golang/blobs/{blob}"))[0] == 200
    shutil.rmtree(cache_root(first) / "data" / "links")
    down = hub.inject("status", status=503)

    second = await make_proxy(
        hub, tag_ttl=3600, location=first.app[SERVICES].settings.storage.location
    )
    assert await get(second, "/v2/library/golang/manifests/1.0") == (200, image.manifest)
    for blob in image.blob_digests:
        assert (await get(second, f"/v2/library/golang/blobs/{blob}"))[0] == 503
    hub.remove_fault(down)
    hub.reset_counts()
    for _ in range(2):
        for blob, data in zip(image.blob_digests, (image.config, *image.layers), strict=True):
            assert await get(second, f"/v2/library/golang/blobs/{blob}") == (200, data)
    assert hub.count("HEAD", kind="blob", status=200) == len(image.blob_digests)
    assert hub.blob_gets() == hub.cdn_gets() == 0


async def test_a_client_of_another_repository_does_not_join_a_manifest_fetch(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    hub = await fakehub_factory(strict_blobs=True)
    image = hub.add_image("myorg/private", "1.0")
    hub.add_image("library/golang", "1.0")
    client = await make_proxy(hub)
    gate = hub.inject("slow_first_byte", method="GET", path_contains=f"/manifests/{image.digest}")
    owner = asyncio.create_task(get(client, f"/v2/myorg/private/manifests/{image.digest}"))
    await gate.wait_hit()
    other = asyncio.create_task(get(client, f"/v2/library/golang/manifests/{image.digest}"))
    await hub.wait_for(lambda: hub.count(path_contains=f"golang/manifests/{image.digest}") > 0)
    gate.release()
    assert await asyncio.wait_for(owner, timeout=10) == (200, image.manifest)
    status, body = await asyncio.wait_for(other, timeout=10)
    assert status == 404 and body != image.manifest


# --- issue 21, item 1: a manifest's contents never grant access --------------------------------


def smuggling_manifest(hub: FakeHub, victims: list[tuple[str, int]], media_type: str) -> bytes:
    """An image manifest of attacker/leak of its own (config and one layer it really holds),
    with fields registries ignore listing other repositories' content: ``manifests`` (as in an
    index), ``blobs`` (as in an artifact manifest), and a ``subject``."""
    config = hub.add_blob(b'{"os": "linux", "architecture": "amd64"}', repo="attacker/leak")
    layer = hub.add_blob(b"the attacker's own layer", repo="attacker/leak")
    described = [{"mediaType": media_type, "digest": d, "size": n} for d, n in victims]
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 40},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": 24}],
            "manifests": described,
            "blobs": described,
            "subject": described[0],
        }
    ).encode()


async def test_content_named_in_a_manifest_is_not_served_under_its_repository(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    """The attack of issue 21: attacker/leak pushes an image manifest listing secret/app's
    manifest, a private upstream's manifest and their layers in fields registries do not check;
    one GET of it must not make any of them readable under attacker/leak."""
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    private: FakeHub = await fakehub_factory(
        strict_blobs=True, users={"bot": "pw"}, allow_anonymous=False
    )
    secret = hub.add_image("secret/app", "1.0", [b"secret layer"])
    hidden = private.add_image("company/hidden", "1.0", [b"private layer"])
    extra = (UpstreamSettings("ghcr.io", private.url, "bot", "pw"),)
    owner = await make_proxy(hub, extra=extra)
    for path in (
        "/v2/secret/app/manifests/1.0",
        *(f"/v2/secret/app/blobs/{d}" for d in secret.blob_digests),
        "/v2/ghcr.io/company/hidden/manifests/1.0",
        *(f"/v2/ghcr.io/company/hidden/blobs/{d}" for d in hidden.blob_digests),
    ):
        assert (await get(owner, path))[0] == 200, path
    victims = [(secret.digest, len(secret.manifest)), (hidden.digest, len(hidden.manifest))]
    victims += [(d, 100) for d in (*secret.blob_digests, *hidden.blob_digests)]
    evil = smuggling_manifest(hub, victims, OCI_MANIFEST)
    hub.add_manifest("attacker/leak", evil, OCI_MANIFEST, tag="evil")

    # Another instance on the same cache, where secret/* is refused outright.
    client = await make_proxy(
        hub,
        extra=extra,
        location=owner.app[SERVICES].settings.storage.location,
        deny_repositories=parse_repository_patterns("secret/*"),
    )
    assert await get(client, "/v2/attacker/leak/manifests/evil") == (200, evil)
    assert (await get(client, "/v2/secret/app/manifests/1.0"))[0] == 403
    for digest, _ in victims:
        for kind in ("manifests", "blobs"):
            for method in ("GET", "HEAD"):
                response = await client.request(
                    method, f"/v2/attacker/leak/{kind}/{digest}", headers=ACCEPT_ALL
                )
                body = await response.read()
                assert response.status == 404, (method, kind, digest)
                assert b"secret" not in body and b"private" not in body


async def test_a_repositorys_own_layers_cached_elsewhere_cost_one_head_for_the_fleet(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    """alpine's base layer already cached through golang: one free HEAD per (repository, blob),
    remembered in storage, so every other instance serves it with no upstream request."""
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    golang = hub.add_image("library/golang", "1.22", [SHARED, b"golang layer"])
    alpine = hub.add_image("library/alpine", "3.20", [SHARED])
    one = await make_proxy(hub)
    for blob in golang.blob_digests:
        assert (await get(one, f"/v2/library/golang/blobs/{blob}"))[0] == 200
    assert (await get(one, "/v2/library/alpine/manifests/3.20"))[0] == 200
    hub.reset_counts()
    shared = alpine.layer_digests[0]
    for _ in range(3):
        assert await get(one, f"/v2/library/alpine/blobs/{shared}") == (200, SHARED)
    assert hub.count("HEAD", f"library/alpine/blobs/{shared}", status=200) == 1
    assert hub.blob_gets() == hub.cdn_gets() == hub.manifest_gets() == 0
    hub.reset_counts()
    two = await make_proxy(hub, location=one.app[SERVICES].settings.storage.location)
    assert await get(two, f"/v2/library/alpine/blobs/{shared}") == (200, SHARED)
    assert hub.count(server=None) == 0


async def test_a_blob_the_upstream_refused_stays_refused_once_cached_for_another(
    fakehub_factory: HubFactory, make_proxy: ProxyFactory
) -> None:
    """A fetch links its repository only once the upstream answered for it (issue 21,
    mutation: the link written before the upstream answers, even on a 404)."""
    hub: FakeHub = await fakehub_factory(strict_blobs=True)
    hub.add_image("library/golang", "1.0")
    image = hub.add_image("private/app", "1.0", [b"private layer"])
    client = await make_proxy(hub, negative_ttl=0)
    layer = image.layer_digests[0]
    assert (await get(client, f"/v2/library/golang/blobs/{layer}"))[0] == 404
    assert await get(client, f"/v2/private/app/blobs/{layer}") == (200, b"private layer")
    status, body = await get(client, f"/v2/library/golang/blobs/{layer}")
    assert status == 404 and b"private" not in body
