"""Self-tests of the fake Docker Hub (tests/support/fakehub/), driven with a plain client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from support.fakehub import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    SERVICE,
    FakeHub,
    ImageInfo,
)

REPO = "library/golang"
BIG_LAYER = bytes(range(256)) * 8  # 2 KiB, every byte value

Factory = Callable[..., Awaitable[FakeHub]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def image(fakehub: FakeHub) -> ImageInfo:
    return fakehub.add_image(REPO, "1.22", [b"first layer", BIG_LAYER])


def parse_challenge(header: str) -> dict[str, str]:
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


async def get_token(
    session: aiohttp.ClientSession,
    hub: FakeHub,
    repos: Sequence[str] = (REPO,),
    auth: dict[str, str] | None = None,
) -> str:
    params = [("service", SERVICE)] + [("scope", f"repository:{r}:pull") for r in repos]
    async with session.get(hub.token_url, params=params, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    token = body["token"]
    assert isinstance(token, str)
    return token


def basic(login: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{login}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def authed(
    session: aiohttp.ClientSession, hub: FakeHub, repos: Sequence[str] = (REPO,)
) -> dict[str, str]:
    return bearer(await get_token(session, hub, repos))


def manifest_url(hub: FakeHub, ref: str, repo: str = REPO) -> str:
    return f"{hub.url}/v2/{repo}/manifests/{ref}"


def blob_url(hub: FakeHub, digest: str, repo: str = REPO) -> str:
    return f"{hub.url}/v2/{repo}/blobs/{digest}"


async def error_code(resp: aiohttp.ClientResponse) -> str:
    body = await resp.json()
    code = body["errors"][0]["code"]
    assert isinstance(code, str)
    return code


# ---------------------------------------------------------------- auth


async def test_unauthenticated_requests_get_docker_hub_challenges(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    async with session.get(f"{fakehub.url}/v2/") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="{fakehub.url}/token",service="registry.docker.io"'
        )
    async with session.get(manifest_url(fakehub, "1.22")) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="{fakehub.url}/token",service="registry.docker.io",'
            f'scope="repository:{REPO}:pull"'
        )
        assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        assert await error_code(resp) == "UNAUTHORIZED"
    async with session.get(blob_url(fakehub, image.config_digest), allow_redirects=False) as resp:
        assert resp.status == 401
    assert fakehub.count(status=401) == 3


async def test_anonymous_token_flow_serves_the_stored_bytes(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    async with session.get(manifest_url(fakehub, "1.22")) as resp:
        challenge = parse_challenge(resp.headers["WWW-Authenticate"])
    params = {"service": challenge["service"], "scope": challenge["scope"]}
    async with session.get(challenge["realm"], params=params) as resp:
        assert resp.status == 200
        grant = await resp.json()
    assert grant["token"] == grant["access_token"]
    assert grant["expires_in"] == 300
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", grant["issued_at"])

    async with session.get(manifest_url(fakehub, "1.22"), headers=bearer(grant["token"])) as resp:
        assert resp.status == 200
        body = await resp.read()
        assert body == image.manifest
        assert resp.headers["Content-Type"] == DOCKER_MANIFEST
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        assert resp.headers["Docker-Content-Digest"] == digest == image.digest
        assert resp.headers["Content-Length"] == str(len(body))
        assert resp.headers["ETag"] == f'"{digest}"'
        assert resp.headers["ratelimit-limit"] == "100;w=21600"
        assert resp.headers["ratelimit-remaining"] == "99;w=21600"
        assert resp.headers["docker-ratelimit-source"] == "127.0.0.1"
    assert fakehub.token_requests() == 1


async def test_token_endpoint_checks_configured_credentials(
    fakehub_factory: Factory, session: aiohttp.ClientSession
) -> None:
    hub = await fakehub_factory(users={"alice": "s3cret"}, allow_anonymous=False)
    hub.add_image(REPO, "1.22")
    params = {"service": SERVICE, "scope": f"repository:{REPO}:pull"}
    async with session.get(hub.token_url, params=params) as resp:
        assert resp.status == 401
    async with session.get(hub.token_url, params=params, headers=basic("alice", "wrong")) as resp:
        assert resp.status == 401
        assert (await resp.json())["details"] == "incorrect username or password"
    async with session.get(hub.token_url, params=params, headers=basic("bob", "")) as resp:
        assert resp.status == 401
    async with session.get(
        hub.token_url, params=params, headers={"Authorization": "Basic !!!"}
    ) as resp:
        assert resp.status == 401
    token = await get_token(session, hub, auth=basic("alice", "s3cret"))
    async with session.get(manifest_url(hub, "1.22"), headers=bearer(token)) as resp:
        assert resp.status == 200
        assert resp.headers["docker-ratelimit-source"] == "alice"
    assert hub.registry.tokens[token].username == "alice"


async def test_token_endpoint_insists_on_the_service(
    fakehub: FakeHub, session: aiohttp.ClientSession
) -> None:
    params = {"service": "example.com", "scope": f"repository:{REPO}:pull"}
    async with session.get(fakehub.token_url, params=params) as resp:
        assert resp.status == 400


async def test_tokens_are_bound_to_their_scope(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fakehub.add_image("library/alpine", "3.20")
    headers = await authed(session, fakehub)
    async with session.get(manifest_url(fakehub, "3.20", "library/alpine"), headers=headers) as r:
        assert r.status == 401
        challenge = parse_challenge(r.headers["WWW-Authenticate"])
        assert challenge["error"] == "insufficient_scope"
        assert challenge["scope"] == "repository:library/alpine:pull"
    both = await authed(session, fakehub, [REPO, "library/alpine"])
    async with session.get(manifest_url(fakehub, "3.20", "library/alpine"), headers=both) as r:
        assert r.status == 200


async def test_tokens_expire_by_the_hub_clock_and_on_demand(
    fakehub_factory: Factory, session: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    hub = await fakehub_factory(clock=lambda: now[0], token_ttl=30)
    hub.add_image(REPO, "1.22")
    params = {"service": SERVICE, "scope": f"repository:{REPO}:pull"}
    async with session.get(hub.token_url, params=params) as resp:
        grant = await resp.json()
    assert grant["expires_in"] == 30
    headers = bearer(grant["token"])
    async with session.head(manifest_url(hub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
    now[0] += 30
    async with session.head(manifest_url(hub, "1.22"), headers=headers) as resp:
        assert resp.status == 401
        assert parse_challenge(resp.headers["WWW-Authenticate"])["error"] == "invalid_token"

    fresh = await authed(session, hub)
    async with session.head(manifest_url(hub, "1.22"), headers=fresh) as resp:
        assert resp.status == 200
    hub.registry.expire_tokens()
    async with session.head(manifest_url(hub, "1.22"), headers=fresh) as resp:
        assert resp.status == 401


async def test_auth_can_be_switched_off(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fakehub.require_auth = False
    async with session.get(manifest_url(fakehub, image.digest)) as resp:
        assert resp.status == 200
        assert await resp.read() == image.manifest


# ---------------------------------------------------------------- manifests


async def test_manifest_head_has_the_get_headers_and_is_not_a_pull(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    headers = await authed(session, fakehub)
    async with session.head(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
        assert resp.headers["Content-Length"] == str(len(image.manifest))
        assert resp.headers["Content-Type"] == DOCKER_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == image.digest
        assert resp.headers["ETag"] == f'"{image.digest}"'
        assert resp.headers["ratelimit-remaining"] == "100;w=21600"
    async with session.get(manifest_url(fakehub, image.digest), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["ratelimit-remaining"] == "99;w=21600"
    assert fakehub.rate_remaining == 99
    assert fakehub.manifest_heads() == 1
    assert fakehub.manifest_gets() == 1
    assert fakehub.manifest_gets(REPO, image.digest) == 1
    assert fakehub.manifest_gets(REPO, "1.22") == 0


async def test_exhausted_rate_limit_answers_429_to_gets_only(
    fakehub_factory: Factory, session: aiohttp.ClientSession
) -> None:
    hub = await fakehub_factory(rate_limit=2, retry_after=42)
    hub.add_image(REPO, "1.22")
    headers = await authed(session, hub)
    for remaining in (1, 0):
        async with session.get(manifest_url(hub, "1.22"), headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["ratelimit-remaining"] == f"{remaining};w=21600"
    async with session.get(manifest_url(hub, "1.22"), headers=headers) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "42"
        assert resp.headers["ratelimit-remaining"] == "0;w=21600"
        assert await error_code(resp) == "TOOMANYREQUESTS"
    async with session.head(manifest_url(hub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
    hub.set_rate_limit(10, remaining=1)
    async with session.get(manifest_url(hub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["ratelimit-limit"] == "10;w=21600"


async def test_unlimited_hub_sends_no_rate_limit_headers(
    fakehub_factory: Factory, session: aiohttp.ClientSession
) -> None:
    hub = await fakehub_factory(rate_limit=None)
    hub.add_image(REPO, "1.22")
    async with session.get(manifest_url(hub, "1.22"), headers=await authed(session, hub)) as r:
        assert r.status == 200
        assert "ratelimit-limit" not in r.headers
        assert "ratelimit-remaining" not in r.headers


async def test_if_none_match_answers_304_without_a_pull(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    headers = {**await authed(session, fakehub), "If-None-Match": f'"{image.digest}"'}
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == 304
        assert resp.headers["Docker-Content-Digest"] == image.digest
    assert fakehub.rate_remaining == 100


async def test_unknown_things_get_registry_error_codes(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    headers = await authed(session, fakehub, [REPO, "library/nope"])
    missing = "sha256:" + "0" * 64
    cases = [
        (manifest_url(fakehub, "1.22", "library/nope"), "NAME_UNKNOWN"),
        (blob_url(fakehub, image.config_digest, "library/nope"), "NAME_UNKNOWN"),
        (f"{fakehub.url}/v2/library/nope/tags/list", "NAME_UNKNOWN"),
        (manifest_url(fakehub, "no-such-tag"), "MANIFEST_UNKNOWN"),
        (manifest_url(fakehub, missing), "MANIFEST_UNKNOWN"),
        (blob_url(fakehub, missing), "BLOB_UNKNOWN"),
    ]
    for url, code in cases:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            assert resp.status == 404, url
            assert await error_code(resp) == code, url
    async with session.head(manifest_url(fakehub, "no-such-tag"), headers=headers) as resp:
        assert resp.status == 404
    assert fakehub.rate_remaining == 100


async def test_indexes_and_moving_tags(fakehub: FakeHub, session: aiohttp.ClientSession) -> None:
    index = fakehub.add_multiarch_image(REPO, "1.22", oci=True)
    listing = fakehub.add_multiarch_image("library/alpine", "3.20")
    headers = await authed(session, fakehub, [REPO, "library/alpine"])
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.headers["Content-Type"] == OCI_INDEX
        doc = await resp.json(content_type=None)
    assert [entry["digest"] for entry in doc["manifests"]] == [i.digest for i in index.images]
    assert doc["manifests"][1]["platform"] == {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
    }
    for platform_image in index.images:
        url = manifest_url(fakehub, platform_image.digest)
        async with session.get(url, headers=headers) as resp:
            assert resp.headers["Content-Type"] == OCI_MANIFEST
            assert await resp.read() == platform_image.manifest
    url = manifest_url(fakehub, "3.20", "library/alpine")
    async with session.get(url, headers=headers) as resp:
        assert resp.headers["Content-Type"] == DOCKER_MANIFEST_LIST
        assert await resp.read() == listing.manifest

    amd64 = index.images[0]
    fakehub.set_tag(REPO, "1.22", amd64.digest)
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.headers["Docker-Content-Digest"] == amd64.digest
    with pytest.raises(KeyError):
        fakehub.set_tag(REPO, "1.22", "sha256:" + "0" * 64)


# ---------------------------------------------------------------- blobs and the CDN


async def test_blob_get_redirects_to_a_cdn_that_rejects_authorization(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    headers = await authed(session, fakehub)
    async with session.get(blob_url(fakehub, digest), headers=headers, allow_redirects=False) as r:
        assert r.status == 307
        location = r.headers["Location"]
    assert location.startswith(f"{fakehub.cdn_url}/cdn/{digest}?sig=")
    async with session.get(location) as resp:
        assert resp.status == 200
        assert await resp.read() == BIG_LAYER
    assert fakehub.cdn_auth_violations == 0
    async with session.get(location, headers=headers) as resp:
        assert resp.status == 400
    assert fakehub.cdn_auth_violations == 1
    async with session.get(location.replace("sig=", "sig=0")) as resp:
        assert resp.status == 403
    assert fakehub.blob_gets(digest) == 1
    assert fakehub.blob_gets(image.config_digest) == 0
    assert fakehub.cdn_gets(digest) == 3
    assert fakehub.count(server="cdn") == 3


async def test_blob_head_answers_directly(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    async with session.head(blob_url(fakehub, digest), headers=await authed(session, fakehub)) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(BIG_LAYER))
        assert r.headers["Docker-Content-Digest"] == digest
    assert fakehub.blob_heads(digest) == 1
    assert fakehub.count(server="cdn") == 0


async def test_blobs_served_by_the_registry_when_redirects_are_off(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fakehub.redirect_blobs = False
    digest = image.layer_digests[1]
    headers = await authed(session, fakehub)
    async with session.get(blob_url(fakehub, digest), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == digest
        assert await resp.read() == BIG_LAYER
    ranged = {**headers, "Range": "bytes=2-5"}
    async with session.get(blob_url(fakehub, digest), headers=ranged) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 2-5/{len(BIG_LAYER)}"
        assert await resp.read() == BIG_LAYER[2:6]
    beyond = {**headers, "Range": f"bytes={len(BIG_LAYER)}-"}
    async with session.get(blob_url(fakehub, digest), headers=beyond) as resp:
        assert resp.status == 416
    assert fakehub.count(server="cdn") == 0


# ---------------------------------------------------------------- tags and counters


async def test_tags_list_paginates_with_link_headers(
    fakehub: FakeHub, session: aiohttp.ClientSession
) -> None:
    for tag in ("e", "a", "c", "b", "d"):
        fakehub.add_image(REPO, tag)
    headers = await authed(session, fakehub)
    async with session.get(f"{fakehub.url}/v2/{REPO}/tags/list", headers=headers) as resp:
        assert await resp.json() == {"name": REPO, "tags": ["a", "b", "c", "d", "e"]}
        assert "Link" not in resp.headers
    pages: list[list[str]] = []
    url: str | None = f"{fakehub.url}/v2/{REPO}/tags/list?n=2"
    while url is not None:
        async with session.get(url, headers=headers) as resp:
            pages.append((await resp.json())["tags"])
            link = resp.headers.get("Link")
        if link is None:
            url = None
        else:
            match = re.fullmatch(r'<(/v2/[^>]+)>; rel="next"', link)
            assert match is not None, link
            url = fakehub.url + match.group(1)
    assert pages == [["a", "b"], ["c", "d"], ["e"]]
    async with session.get(f"{fakehub.url}/v2/{REPO}/tags/list?n=x", headers=headers) as resp:
        assert resp.status == 400
        assert await error_code(resp) == "PAGINATION_NUMBER_INVALID"


async def test_every_request_is_recorded_and_counts_can_be_reset(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    headers = await authed(session, fakehub)
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        await resp.read()
    async with session.get(blob_url(fakehub, image.config_digest), headers=headers) as resp:
        assert await resp.read() == image.config  # followed the 307 (aiohttp drops auth)
    recorded = [(r.server, r.method, r.kind, r.status) for r in fakehub.requests]
    assert recorded == [
        ("registry", "GET", "token", 200),
        ("registry", "GET", "manifest", 200),
        ("registry", "GET", "blob", 307),
        ("cdn", "GET", "cdn", 200),
    ]
    assert fakehub.requests[0].query.startswith("service=registry.docker.io")
    assert fakehub.count("GET", "/manifests/") == 1
    assert fakehub.count(server=None) == 4
    assert fakehub.count(server="cdn", path_contains=image.config_digest) == 1
    assert fakehub.count(status=307) == 1
    assert fakehub.cdn_gets(image.config_digest) == 1
    fakehub.reset_counts()
    assert fakehub.count(server=None) == 0
    assert fakehub.manifest_gets() == 0


async def test_wait_for_wakes_on_requests(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    headers = await authed(session, fakehub)

    async def pull() -> int:
        async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
            await resp.read()
            return resp.status

    task = asyncio.create_task(pull())
    await fakehub.wait_for(lambda: fakehub.count("GET", "/manifests/", status=200) == 1)
    assert await asyncio.wait_for(task, 5) == 200
    with pytest.raises(TimeoutError):
        await fakehub.wait_for(lambda: fakehub.manifest_gets() == 2, timeout=0.01)


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "TOOMANYREQUESTS"), (500, "UNKNOWN"), (503, "UNAVAILABLE"), (403, "DENIED")],
)
async def test_status_faults_replace_the_answer(
    fakehub: FakeHub,
    session: aiohttp.ClientSession,
    image: ImageInfo,
    status: int,
    code: str,
) -> None:
    headers = await authed(session, fakehub)
    fault = fakehub.inject("status", status=status, path_contains="/manifests/", times=1)
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == status
        assert await error_code(resp) == code
        if status == 429:
            assert resp.headers["Retry-After"] == "60"
            assert resp.headers["ratelimit-limit"] == "100;w=21600"
        else:
            assert "Retry-After" not in resp.headers
    assert fault.hits == 1
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
    assert fakehub.rate_remaining == 99


async def test_injected_401_challenges_again(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    headers = await authed(session, fakehub)
    fakehub.inject("status", status=401, times=1)
    async with session.head(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == 401
        challenge = parse_challenge(resp.headers["WWW-Authenticate"])
    assert challenge["error"] == "invalid_token"
    assert challenge["scope"] == f"repository:{REPO}:pull"


async def test_status_faults_skip_the_auth_challenge_and_respect_scope(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fakehub.add_image(REPO, "other")
    fault = fakehub.inject(
        "status",
        status=503,
        retry_after=7,
        path_contains="/manifests/1.22",
        method="GET",
        times=2,
    )
    async with session.get(manifest_url(fakehub, "1.22")) as resp:
        assert resp.status == 401  # the challenge does not use up the fault
    assert fault.hits == 0
    headers = await authed(session, fakehub)
    async with session.get(manifest_url(fakehub, "other"), headers=headers) as resp:
        assert resp.status == 200
    async with session.head(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
    for _ in range(2):
        async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "7"
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
    assert not fault.active


async def test_status_fault_on_the_token_endpoint(
    fakehub: FakeHub, session: aiohttp.ClientSession
) -> None:
    fakehub.inject("status", status=503, path_contains="/token", times=1)
    params = {"service": SERVICE, "scope": f"repository:{REPO}:pull"}
    async with session.get(fakehub.token_url, params=params) as resp:
        assert resp.status == 503
    await get_token(session, fakehub)


async def test_drop_mid_blob_cuts_the_body_short(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    fault = fakehub.inject("drop_mid_blob", path_contains=digest, after_bytes=100, times=1)
    location = fakehub.cdn_blob_url(digest)
    async with session.get(location) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(BIG_LAYER))
        assert await resp.content.readexactly(100) == BIG_LAYER[:100]
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    record = fakehub.matching(server="cdn")[-1]
    assert (record.status, record.aborted) == (200, True)
    assert fault.hits == 1
    async with session.get(location) as resp:
        assert await resp.read() == BIG_LAYER


async def test_drop_mid_blob_on_the_registry_when_redirects_are_off(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fakehub.redirect_blobs = False
    digest = image.layer_digests[1]
    fakehub.inject("drop_mid_blob", path_contains=digest)
    headers = await authed(session, fakehub)
    async with session.get(blob_url(fakehub, digest), headers=headers) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_wrong_bytes_keep_length_and_headers(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    fakehub.inject("wrong_bytes", path_contains=digest, times=1)
    async with session.get(fakehub.cdn_blob_url(digest)) as resp:
        body = await resp.read()
    assert len(body) == len(BIG_LAYER)
    assert body != BIG_LAYER

    fakehub.inject("wrong_bytes", path_contains="/manifests/", times=1)
    headers = await authed(session, fakehub)
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        body = await resp.read()
        assert resp.headers["Docker-Content-Digest"] == image.digest
    assert len(body) == len(image.manifest)
    assert "sha256:" + hashlib.sha256(body).hexdigest() != image.digest


async def test_ranges_are_recorded_and_faults_scope_to_one_piece(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    location = fakehub.cdn_blob_url(digest)
    fakehub.inject("wrong_bytes", path_contains=digest, range_start=1024, times=1)
    async with session.get(location, headers={"Range": "bytes=0-1023"}) as resp:
        assert resp.status == 206
        assert await resp.read() == BIG_LAYER[:1024]
    async with session.get(location, headers={"Range": "bytes=1024-"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 1024-2047/{len(BIG_LAYER)}"
        assert await resp.read() != BIG_LAYER[1024:]
    async with session.get(location) as resp:
        assert await resp.read() == BIG_LAYER
    assert fakehub.blob_ranges(digest) == ["bytes=0-1023", "bytes=1024-", None]
    assert [r.range_start for r in fakehub.matching(server="cdn")] == [0, 1024, None]


async def test_ignore_range_answers_200_with_the_whole_blob(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    fault = fakehub.inject("ignore_range", path_contains=digest, range_start=100)
    for _ in range(2):
        async with session.get(
            fakehub.cdn_blob_url(digest), headers={"Range": "bytes=100-199"}
        ) as resp:
            assert resp.status == 200
            assert "Content-Range" not in resp.headers
            assert await resp.read() == BIG_LAYER
    async with session.get(fakehub.cdn_blob_url(digest), headers={"Range": "bytes=0-99"}) as resp:
        assert resp.status == 206
    assert fault.hits == 2


async def test_slow_first_byte_holds_until_the_gate_opens(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    fault = fakehub.inject("slow_first_byte", path_contains=digest, server="cdn")

    async def fetch() -> bytes:
        async with session.get(fakehub.cdn_blob_url(digest)) as resp:
            return await resp.read()

    task = asyncio.create_task(fetch())
    await fault.wait_hit()
    assert fakehub.matching(server="cdn")[-1].status is None
    assert not task.done()
    fault.release()
    assert await asyncio.wait_for(task, 5) == BIG_LAYER
    assert fakehub.matching(server="cdn")[-1].status == 200


async def test_slow_first_byte_with_a_delay(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fakehub.inject("slow_first_byte", delay=0.05, server="cdn")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.get(fakehub.cdn_blob_url(image.config_digest)) as resp:
        assert await resp.read() == image.config
    assert loop.time() - started >= 0.04  # timers may fire a hair early


async def test_pause_mid_blob_sends_part_then_waits(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    digest = image.layer_digests[1]
    fault = fakehub.inject("pause_mid_blob", path_contains=digest, after_bytes=10)
    async with session.get(fakehub.cdn_blob_url(digest)) as resp:
        assert resp.status == 200
        assert await asyncio.wait_for(resp.content.readexactly(10), 5) == BIG_LAYER[:10]
        assert fault.hits == 1
        fault.release()
        assert await asyncio.wait_for(resp.read(), 5) == BIG_LAYER[10:]


async def test_hang_never_answers_until_close(
    session: aiohttp.ClientSession,
) -> None:
    hub = FakeHub()
    await hub.start()
    try:
        hub.add_image(REPO, "1.22")
        headers = await authed(session, hub)
        fault = hub.inject("hang", path_contains="/manifests/")

        async def pull() -> int:
            async with session.get(manifest_url(hub, "1.22"), headers=headers) as resp:
                return resp.status

        task = asyncio.create_task(pull())
        await fault.wait_hit()
        assert hub.matching(kind="manifest")[-1].status is None
    finally:
        async with asyncio.timeout(5):
            await hub.close()
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, 5)
    assert hub.matching(kind="manifest")[-1].aborted


async def test_hang_is_seen_by_client_timeouts(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fakehub.inject("hang", server="cdn", times=1)
    with pytest.raises(asyncio.TimeoutError):
        async with session.get(
            fakehub.cdn_blob_url(image.config_digest),
            timeout=aiohttp.ClientTimeout(total=0.1),
        ) as resp:
            await resp.read()
    async with session.get(fakehub.cdn_blob_url(image.config_digest)) as resp:
        assert await resp.read() == image.config


async def test_no_digest_header_on_head(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    headers = await authed(session, fakehub)
    fakehub.inject("no_digest_header", method="HEAD", times=1)
    async with session.get(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.headers["Docker-Content-Digest"] == image.digest
    async with session.head(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.status == 200
        assert "Docker-Content-Digest" not in resp.headers
    async with session.head(manifest_url(fakehub, "1.22"), headers=headers) as resp:
        assert resp.headers["Docker-Content-Digest"] == image.digest


async def test_clear_faults_releases_held_requests(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fault = fakehub.inject("slow_first_byte", server="cdn")

    async def fetch() -> int:
        async with session.get(fakehub.cdn_blob_url(image.config_digest)) as resp:
            await resp.read()
            return resp.status

    task = asyncio.create_task(fetch())
    await fault.wait_hit()
    fakehub.clear_faults()
    assert await asyncio.wait_for(task, 5) == 200
    assert fakehub.faults == []


async def test_fault_scopes_by_server_and_method(
    fakehub: FakeHub, session: aiohttp.ClientSession, image: ImageInfo
) -> None:
    fault = fakehub.inject("status", status=500, server="cdn", method="HEAD")
    headers = await authed(session, fakehub)
    async with session.get(blob_url(fakehub, image.config_digest), headers=headers) as resp:
        assert resp.status == 200
    async with session.head(fakehub.cdn_blob_url(image.config_digest)) as resp:
        assert resp.status == 500
    assert fault.hits == 1
    fakehub.remove_fault(fault)
    async with session.head(fakehub.cdn_blob_url(image.config_digest)) as resp:
        assert resp.status == 200


async def test_images_are_stable_and_oci_on_request(fakehub: FakeHub) -> None:
    first = fakehub.add_image(REPO, "x")
    again = fakehub.add_image(REPO, "x")
    assert first.digest == again.digest
    oci = fakehub.add_image(REPO, "oci", [b"a", b"b"], oci=True)
    assert oci.media_type == OCI_MANIFEST
    assert oci.blob_digests == (oci.config_digest, *oci.layer_digests)
    assert oci.blob_bytes == len(oci.config) + 2
    assert all(digest in fakehub.blobs for digest in oci.blob_digests)
    stored = fakehub.get_manifest(REPO, "oci")
    assert stored is not None
    assert stored.data == oci.manifest


def test_fixture_options_are_keyword_only() -> None:
    options: dict[str, Any] = {"users": {"u": "p"}, "rate_limit": None}
    hub = FakeHub(**options)
    assert hub.users == {"u": "p"}
    with pytest.raises(RuntimeError):
        _ = hub.url


def test_a_fault_refuses_parameters_its_kind_does_not_read() -> None:
    hub = FakeHub()
    with pytest.raises(TypeError, match="after_bytes"):
        hub.inject("status", status=503, after_bytes=10)
    with pytest.raises(TypeError, match="its status"):
        hub.inject("status")
    with pytest.raises(TypeError, match="gate"):
        hub.inject("drop_mid_blob", gate=asyncio.Event())
    assert hub.faults == []
    held = hub.inject("pause_mid_blob", after_bytes=10)
    assert held.gate is not None, "a held fault without a delay gets a gate to release"
