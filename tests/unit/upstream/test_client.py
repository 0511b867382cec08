"""The upstream client's rules, against the fake Docker Hub and without the app.

- Status mapping: 404, 401, 403, 429 (with its Retry-After), 5xx and anything else each become
  one ``UpstreamError`` subclass, which the cache and the HTTP edge act on.
- Retries: only what got no response (refused, reset) or a 502/503/504 is tried again; a timeout
  is not (it already cost the client a whole timeout), a 500 is not, and nothing is tried again
  once a body byte was handed over.
- Redirects: followed by the client itself; the registry's Authorization goes to the registry's
  own origin only, never to the CDN a blob redirects to.
- Tokens: one token request per scope, cached, refreshed after the registry refuses it.

The helpers at the top are the only places that know the client's API.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.fakehub import FakeHub, RecordedRequest

from proxy.config import UpstreamSettings
from proxy.registry.reference import Digest
from proxy.upstream.client import ContentRange, RegistryClient
from proxy.upstream.errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

REPO = "library/golang"
RETRY_DELAYS = (0.0, 0.0)
ATTEMPTS = len(RETRY_DELAYS) + 1
MAX_MANIFEST = 4 * 1024 * 1024
LAYER = bytes(range(256)) * 4096  # 1 MiB: several chunks

# --- the client's API, in one place ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def upstream_client(
    url: str,
    *,
    username: str | None = None,
    password: str = "",
    read_timeout: float = 5.0,
    retry_delays: tuple[float, ...] = RETRY_DELAYS,
) -> AsyncIterator[RegistryClient]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield RegistryClient(
            UpstreamSettings("docker.io", url, username, password),
            session,
            connect_timeout=2.0,
            read_timeout=read_timeout,
            retry_delays=retry_delays,
        )


async def get_manifest(client: RegistryClient, name: str, reference: str) -> tuple[bytes, str]:
    """(bytes, digest) of a manifest GET."""
    manifest = await client.get_manifest(name, reference, MAX_MANIFEST)
    return manifest.data, str(manifest.digest)


async def head_manifest(client: RegistryClient, name: str, reference: str) -> str | None:
    head = await client.head_manifest(name, reference)
    return None if head.digest is None else str(head.digest)


async def get_blob(client: RegistryClient, name: str, digest: str) -> bytes:
    async with client.open_blob(name, Digest.parse(digest)) as stream:
        return b"".join([chunk async for chunk in stream.chunks])


@pytest.fixture
async def client(fakehub: FakeHub) -> AsyncIterator[RegistryClient]:
    async with upstream_client(fakehub.url) as made:
        yield made


def authorized(hub: FakeHub, method: str, kind: str) -> list[RecordedRequest]:
    """Requests of ``kind`` that got past authentication (the 401 challenges left out)."""
    return [r for r in hub.matching(method, kind=kind) if r.status != 401]  # type: ignore[arg-type]


# --- status mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (401, UpstreamDenied, "UNAUTHORIZED"),
        (403, UpstreamDenied, "DENIED"),
        (429, UpstreamRateLimited, "TOOMANYREQUESTS"),
        (500, UpstreamUnavailable, "UNKNOWN"),
        (502, UpstreamUnavailable, "UNAVAILABLE"),
        (503, UpstreamUnavailable, "UNAVAILABLE"),
        (504, UpstreamUnavailable, "UNAVAILABLE"),
        (400, UpstreamInvalid, "UNKNOWN"),
        (405, UpstreamInvalid, "UNSUPPORTED"),
        (418, UpstreamInvalid, "UNKNOWN"),
    ],
)
async def test_status_becomes_one_kind_of_error(
    fakehub: FakeHub,
    client: RegistryClient,
    status: int,
    error: type[UpstreamError],
    code: str,
) -> None:
    image = fakehub.add_image(REPO, "1.22")
    fakehub.inject("status", status=status, path_contains="/manifests/")
    with pytest.raises(UpstreamError) as caught:
        await get_manifest(client, REPO, image.digest)
    assert type(caught.value) is error
    assert caught.value.status == status
    assert caught.value.code == code  # read from the registry's error body


async def test_429_carries_retry_after(fakehub: FakeHub, client: RegistryClient) -> None:
    fakehub.add_image(REPO, "1.22")
    fakehub.inject("status", status=429, retry_after=42, path_contains="/manifests/")
    for call in (get_manifest, head_manifest):
        with pytest.raises(UpstreamRateLimited) as caught:
            await call(client, REPO, "1.22")
        assert caught.value.retry_after == "42"


async def test_not_found_carries_the_upstreams_code(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    fakehub.add_image(REPO, "1.22")
    with pytest.raises(UpstreamNotFound) as tag:
        await get_manifest(client, REPO, "nosuchtag")
    assert (tag.value.status, tag.value.code) == (404, "MANIFEST_UNKNOWN")
    with pytest.raises(UpstreamNotFound) as repo:
        await get_manifest(client, "library/nosuchrepo", "1.22")
    assert repo.value.code == "NAME_UNKNOWN"
    # A HEAD's 404 has no body to read a code from: none is made up here (the HTTP edge names
    # what is missing, by what the client asked for).
    with pytest.raises(UpstreamNotFound) as head:
        await head_manifest(client, "library/nosuchrepo", "1.22")
    assert (head.value.status, head.value.code) == (404, None)
    with pytest.raises(UpstreamNotFound) as blob:
        await get_blob(client, REPO, f"sha256:{'0' * 64}")
    assert blob.value.code == "BLOB_UNKNOWN"


async def test_a_manifest_by_digest_must_hash_to_it(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    image = fakehub.add_image(REPO, "1.22")
    fakehub.inject("wrong_bytes", path_contains="/manifests/", times=1)
    with pytest.raises(UpstreamInvalid, match="hash"):
        await get_manifest(client, REPO, image.digest)
    assert await get_manifest(client, REPO, image.digest) == (image.manifest, image.digest)


async def test_a_manifest_over_the_size_limit_is_refused(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    image = fakehub.add_image(REPO, "1.22")
    with pytest.raises(UpstreamInvalid, match="limit"):
        await client.get_manifest(REPO, image.digest, len(image.manifest) - 1)


# --- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_are_retried(
    fakehub: FakeHub, client: RegistryClient, status: int
) -> None:
    image = fakehub.add_image(REPO, "1.22")
    fakehub.inject("status", status=status, path_contains="/manifests/", times=ATTEMPTS - 1)
    assert await get_manifest(client, REPO, "1.22") == (image.manifest, image.digest)
    assert [r.status for r in authorized(fakehub, "GET", "manifest")] == [status] * (
        ATTEMPTS - 1
    ) + [200]


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_retries_are_bounded(fakehub: FakeHub, client: RegistryClient, status: int) -> None:
    fakehub.add_image(REPO, "1.22")
    fakehub.inject("status", status=status, path_contains="/manifests/")
    with pytest.raises(UpstreamUnavailable):
        await get_manifest(client, REPO, "1.22")
    assert len(authorized(fakehub, "GET", "manifest")) == ATTEMPTS


@pytest.mark.parametrize("status", [500, 429, 404, 403, 400])
async def test_other_answers_are_not_retried(
    fakehub: FakeHub, client: RegistryClient, status: int
) -> None:
    fakehub.add_image(REPO, "1.22")
    fakehub.inject("status", status=status, path_contains="/manifests/")
    with pytest.raises(UpstreamError):
        await get_manifest(client, REPO, "1.22")
    assert len(authorized(fakehub, "GET", "manifest")) == 1


class HangingUp:
    """A TCP server on loopback that accepts each connection and closes it at once."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def connections_for_one_request(retry_delays: tuple[float, ...]) -> int:
    server = HangingUp()
    async with server as url, upstream_client(url, retry_delays=retry_delays) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await get_manifest(client, REPO, "1.22")
    assert not caught.value.timed_out
    return server.connections


async def test_a_connection_that_fails_is_retried() -> None:
    # aiohttp itself may reconnect once on a dropped connection: count against one attempt.
    one_attempt = await connections_for_one_request(())
    assert one_attempt >= 1
    assert await connections_for_one_request(RETRY_DELAYS) == ATTEMPTS * one_attempt


async def test_a_timeout_is_not_retried(fakehub: FakeHub) -> None:
    fakehub.add_image(REPO, "1.22")
    hang = fakehub.inject("hang", method="GET", path_contains="/manifests/")
    async with upstream_client(fakehub.url, read_timeout=0.3) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await get_manifest(client, REPO, "1.22")
    assert caught.value.timed_out
    assert hang.hits == 1


async def test_nothing_is_retried_after_a_blob_byte(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    digest = fakehub.add_blob(LAYER, repo=REPO)
    fakehub.inject("drop_mid_blob", path_contains=digest, after_bytes=300_000, server="cdn")
    with pytest.raises(UpstreamUnavailable, match="stream broken"):
        await get_blob(client, REPO, digest)
    assert fakehub.cdn_gets(digest) == 1
    assert len(authorized(fakehub, "GET", "blob")) == 1


async def test_nothing_is_retried_after_a_manifest_byte(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    image = fakehub.add_image(REPO, "1.22")
    fakehub.inject("drop_mid_blob", path_contains="/manifests/", server="registry", after_bytes=10)
    with pytest.raises(UpstreamUnavailable, match="body broken"):
        await get_manifest(client, REPO, image.digest)
    assert len(authorized(fakehub, "GET", "manifest")) == 1


# --- redirects and where the Authorization goes ---------------------------------------------------


async def test_blob_redirect_to_the_cdn_carries_no_authorization(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    digest = fakehub.add_blob(LAYER, repo=REPO)
    assert await get_blob(client, REPO, digest) == LAYER
    [registry] = authorized(fakehub, "GET", "blob")
    assert registry.status == 307
    assert (registry.authorization or "").startswith("Bearer ")
    [cdn] = fakehub.matching("GET", server="cdn")
    assert cdn.authorization is None
    assert fakehub.cdn_auth_violations == 0


class RedirectingRegistry:
    """A registry with Basic auth whose blob GETs redirect within its own origin (``/moved/``),
    or to another origin (``/away/``), or in a loop (``/loop/``). Records who sent what."""

    USER, PASSWORD = "alice", "secret"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization)
        self._runners: list[web.AppRunner] = []
        self.url = self.other_url = ""

    async def __aenter__(self) -> RedirectingRegistry:
        self.url = await self._serve(self._registry)
        self.other_url = await self._serve(self._other)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runner in self._runners:
            await runner.cleanup()

    async def _serve(self, handler: Callable[[web.Request], Awaitable[web.Response]]) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def _registry(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        self.seen.append((request.path, authorization))
        if authorization is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="test"'})
        if "/blobs/" in request.path:
            target = {"moved": "/moved/blob", "away": f"{self.other_url}/away/blob"}
            kind = request.path.split("/blobs/")[0].rsplit("/", 1)[-1]  # the name says which
            return web.Response(status=307, headers={"Location": target.get(kind, "/loop/x")})
        if request.path.startswith("/loop/"):
            return web.Response(status=302, headers={"Location": "/loop/again"})
        return web.Response(body=b"moved bytes")

    async def _other(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        return web.Response(body=b"other bytes")


async def test_authorization_follows_a_redirect_only_within_the_registry_origin() -> None:
    digest = f"sha256:{'a' * 64}"
    async with (
        RedirectingRegistry() as registry,
        upstream_client(
            registry.url, username=RedirectingRegistry.USER, password=RedirectingRegistry.PASSWORD
        ) as client,
    ):
        assert await get_blob(client, "test/moved", digest) == b"moved bytes"
        moved = dict(registry.seen)["/moved/blob"]
        assert moved is not None and moved.startswith("Basic ")
        registry.seen.clear()
        assert await get_blob(client, "test/away", digest) == b"other bytes"
        assert dict(registry.seen)["/away/blob"] is None
        with pytest.raises(UpstreamInvalid, match="redirects"):
            await get_blob(client, "test/loop", digest)


# --- tokens ------------------------------------------------------------------------------------


async def test_one_token_per_scope_reused_until_refused(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    fakehub.add_image(REPO, "1.22")
    fakehub.add_image("library/alpine", "3.20")
    await get_manifest(client, REPO, "1.22")
    await head_manifest(client, REPO, "1.22")
    await get_manifest(client, REPO, "1.22")
    assert fakehub.token_requests() == 1
    await get_manifest(client, "library/alpine", "3.20")  # another scope: its own token
    assert fakehub.token_requests() == 2
    await get_manifest(client, REPO, "1.22")
    assert fakehub.token_requests() == 2
    # Only the very first request met a challenge: the realm is remembered, and every request
    # carried the token of its own scope.
    assert fakehub.count(status=401) == 1
    # the registry refuses them now: one new token, request succeeds
    fakehub.registry.expire_tokens()
    await get_manifest(client, REPO, "1.22")
    assert fakehub.token_requests() == 3
    assert fakehub.count(status=401) == 2
    scopes = [r.query for r in fakehub.matching(kind="token")]
    assert all("scope=repository" in scope for scope in scopes)


async def test_concurrent_requests_share_one_token_request(
    fakehub: FakeHub, client: RegistryClient
) -> None:
    fakehub.add_image(REPO, "1.22")
    gate = fakehub.inject("slow_first_byte", path_contains="/token", times=1)
    calls = [asyncio.create_task(get_manifest(client, REPO, "1.22")) for _ in range(10)]
    await gate.wait_hit()
    gate.release()
    await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
    assert fakehub.token_requests() == 1


async def test_tokens_are_fetched_with_the_account(fakehub_factory: Any) -> None:
    hub: FakeHub = await fakehub_factory(users={"alice": "pw"}, allow_anonymous=False)
    image = hub.add_image(REPO, "1.22")
    async with upstream_client(hub.url, username="alice", password="pw") as client:
        assert await get_manifest(client, REPO, "1.22") == (image.manifest, image.digest)
    [token] = hub.matching(kind="token")
    assert (token.authorization or "").startswith("Basic ")
    async with upstream_client(hub.url) as anonymous:
        with pytest.raises(UpstreamDenied) as caught:
            await get_manifest(anonymous, REPO, "1.22")
    assert caught.value.status == 401


def test_content_range_is_parsed_strictly() -> None:
    assert ContentRange.parse("bytes 0-99/1000") == ContentRange(0, 99, 1000)
    assert ContentRange.parse("bytes 5-5/*") == ContentRange(5, 5, None)
    assert ContentRange.parse("bytes 0-99/1000").length == 100  # type: ignore[union-attr]
    for bad in (None, "", "bytes */1000", "bytes 9-3/100", "bytes 0-100/100", "items 0-1/2"):
        assert ContentRange.parse(bad) is None
