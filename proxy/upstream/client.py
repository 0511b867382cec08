"""The upstream registry client: manifests, blobs and tags from one registry.

One ``RegistryClient`` per upstream, all sharing the app's connection pool. It authenticates with
the registry's token flow (``TokenAuth``), follows blob redirects itself so that the registry's
Authorization header never reaches another host (Docker Hub sends blobs from a CDN), and retries
only what is safe to retry: requests that got no response or a 502/503/504, before any body byte
was handed to the caller.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog

from proxy.config import UpstreamSettings
from proxy.ops.logs import count_upstream_request
from proxy.registry.manifest import OCI_INDEX, UPSTREAM_ACCEPT, Manifest, media_type_of
from proxy.registry.reference import Digest
from proxy.upstream.auth import TokenAuth
from proxy.upstream.backoff import Backoff
from proxy.upstream.errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

log = structlog.get_logger(__name__)

CHUNK_SIZE = 256 * 1024
MAX_REDIRECTS = 5
RETRY_DELAYS = (0.2, 1.0)  # seconds before the 2nd and 3rd attempt
PING_CACHE_SECONDS = 30.0
PING_TIMEOUT = 5.0
_RETRYABLE_STATUS = {502, 503, 504}
_REDIRECT_STATUS = {301, 302, 303, 307, 308}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Docker Hub's pull quota as reported on manifest responses (None: not reported)."""

    limit: int | None
    remaining: int | None
    window: int | None
    source: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        limit, window = _quota(headers.get("ratelimit-limit"))
        remaining, remaining_window = _quota(headers.get("ratelimit-remaining"))
        source = headers.get("docker-ratelimit-source")
        if limit is None and remaining is None:
            return None
        return cls(limit, remaining, window or remaining_window, source)


def _quota(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``100;w=21600`` into (100, 21600)."""
    if not value:
        return None, None
    match = re.fullmatch(r"\s*(\d+)\s*(?:;\s*w\s*=\s*(\d+))?.*", value)
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: Digest | None  # None when the upstream sent no Docker-Content-Digest
    media_type: str
    size: int | None


@dataclass(frozen=True, slots=True)
class ContentRange:
    """Which bytes of the blob a 206 answer holds: ``bytes START-END/TOTAL`` (END inclusive)."""

    start: int
    end: int
    total: int | None  # None when the upstream sent ``*``

    @classmethod
    def parse(cls, value: str | None) -> ContentRange | None:
        match = re.fullmatch(
            r"\s*bytes\s+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)\s*", value or ""
        )
        if not match:
            return None
        start, end = int(match.group(1)), int(match.group(2))
        total = None if match.group(3) == "*" else int(match.group(3))
        if end < start or (total is not None and end >= total):
            return None
        return cls(start, end, total)

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(slots=True)
class BlobStream:
    """An open upstream blob response: its size (when known) and its chunks.

    ``size`` is the body's length (Content-Length). For an answer to a ranged request that the
    upstream honoured (206), ``content_range`` says which bytes of the blob the body holds; it is
    None when the upstream sent the whole blob (200). ``url`` is where the bytes came from after
    redirects (Docker Hub's CDN): more ranges of the same blob can be asked for there directly.
    """

    size: int | None
    chunks: AsyncIterator[bytes]
    content_range: ContentRange | None = None
    url: str | None = None


class UpstreamObserver(Protocol):
    """Hears about upstream traffic (proxy.ops.observers passes it to metrics, quotas, page)."""

    def upstream_request(self, upstream: str, method: str, status: int | str) -> None: ...

    def rate_limit(self, upstream: str, rate_limit: RateLimit | None, counted: bool) -> None: ...

    def upstream_refused(self, upstream: str, stage: str, status: int) -> None:
        """A 401/403 to the proxy's account: ``stage`` "token" (the token service refused the
        credentials) or "registry" (a request refused although it carried them)."""


class RegistryClient:
    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        observer: UpstreamObserver | None = None,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self._base = settings.url.rstrip("/")
        self._origin = _origin(self._base)
        self._session = session
        # Every call is bounded: connecting, and each wait for more bytes. A complete blob may take
        # long, so there is no total limit, but a silent upstream is given up after read_timeout.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._observer = observer
        self._auth = TokenAuth(
            session,
            settings.username,
            settings.password,
            self._timeout,
            on_refused=lambda status: self._refused("token", status),
        )
        self._retry_delays = retry_delays
        self._ping_at = -PING_CACHE_SECONDS
        # Every call's failures are recorded here, after its retries.
        self.backoff = Backoff()
        self._ping_error: str | None = None

    # --- back-off after failures ---------------------------------------------------------------

    def backoff_reason(self, repository: str) -> str | None:
        """Why not to ask the upstream about ``repository`` right now (see ``Backoff``), or None."""
        return self.backoff.reason(repository)

    # --- manifests ------------------------------------------------------------------------------

    async def head_manifest(self, name: str, reference: str) -> ManifestHead:
        """Resolve a tag or digest without spending a pull (Docker Hub does not count HEADs)."""
        async with self._request(
            "HEAD", name, f"/manifests/{reference}", {"Accept": UPSTREAM_ACCEPT}
        ) as response:
            self._report_rate_limit(response, counted=False)
            digest_header = response.headers.get("Docker-Content-Digest")
            try:
                digest = Digest.parse(digest_header) if digest_header else None
            except Exception:
                digest = None
            content_type = response.headers.get("Content-Type")
            media_type = media_type_of(b"", content_type)
            if media_type is None:
                raise UpstreamInvalid(f"{name}:{reference} is not a manifest ({content_type})")
            return ManifestHead(digest, media_type, response.content_length)

    async def get_manifest(self, name: str, reference: str, max_bytes: int) -> Manifest:
        """Fetch manifest bytes (a counted pull on Docker Hub), verified when fetched by digest."""
        async with self._request(
            "GET", name, f"/manifests/{reference}", {"Accept": UPSTREAM_ACCEPT}
        ) as response:
            self._report_rate_limit(response, counted=True)
            if response.content_length is not None and response.content_length > max_bytes:
                raise UpstreamInvalid(
                    f"manifest is {response.content_length} bytes, over the limit"
                )
            data = await self._read_limited(response, max_bytes)
            content_type = response.headers.get("Content-Type")
        digest = Digest.of(data)
        if reference.startswith("sha256:") and str(digest) != reference:
            raise UpstreamInvalid(f"manifest {reference} has bytes that hash to {digest}")
        media_type = media_type_of(data, content_type)
        if media_type is None:
            # Not a manifest to any registry client; served, it could be a page on our origin.
            raise UpstreamInvalid(f"{name}:{reference} is not a manifest ({content_type})")
        return Manifest(data, media_type, digest)

    async def _read_limited(self, response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
        data = bytearray()
        try:
            async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                data += chunk
                if len(data) > max_bytes:
                    raise UpstreamInvalid(f"manifest is over the {max_bytes} bytes limit")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _broken(f"manifest body broken: {_describe(exc)}", exc) from exc
        return bytes(data)

    async def get_referrers(self, name: str, path: str, max_bytes: int) -> tuple[bytes, str | None]:
        """One page of an OCI 1.1 referrers list (``path``: ``/referrers/<digest>[?query]``):
        its body and Link header. Not a pull: Docker Hub counts manifest GETs only."""
        async with self._request("GET", name, path, {"Accept": OCI_INDEX}) as response:
            body = await self._read_limited(response, max_bytes)
            return body, response.headers.get("Link")

    # --- blobs ----------------------------------------------------------------------------------

    async def head_blob(self, name: str, digest: Digest) -> int | None:
        async with self._request("HEAD", name, f"/blobs/{digest}", {}) as response:
            return response.content_length

    @asynccontextmanager
    async def open_blob(
        self,
        name: str,
        digest: Digest,
        *,
        first: int | None = None,
        last: int | None = None,
        url: str | None = None,
    ) -> AsyncIterator[BlobStream]:
        """Open a blob for streaming; the chunks raise UpstreamUnavailable if the stream breaks.

        ``first``/``last`` (inclusive; ``last`` None: to the end) ask for a byte range; the answer
        may still be the whole blob (an upstream may ignore Range): see ``BlobStream``. ``url``
        sends the request to a URL an earlier answer came from (``BlobStream.url``) instead of
        the registry; the registry's Authorization still goes only to the registry's origin.
        """
        headers = {}
        if first is not None:
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        async with self._request("GET", name, f"/blobs/{digest}", headers, url=url) as response:
            content_range = None
            if response.status == 206:
                content_range = ContentRange.parse(response.headers.get("Content-Range"))
                if content_range is None or (
                    response.content_length is not None
                    and response.content_length != content_range.length
                ):
                    raise UpstreamInvalid(
                        f"blob {digest}: 206 with a Content-Range that does not fit: "
                        f"{response.headers.get('Content-Range')!r}"
                    )
            yield BlobStream(
                response.content_length,
                self._chunks(response, digest),
                content_range,
                str(response.url),
            )

    async def _chunks(
        self, response: aiohttp.ClientResponse, digest: Digest
    ) -> AsyncIterator[bytes]:
        received = 0
        try:
            async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                received += len(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _broken(
                f"blob {digest} stream broken after {received} bytes: {_describe(exc)}", exc
            ) from exc

    # --- tags -----------------------------------------------------------------------------------

    async def tags_list(
        self, name: str, n: int | None, last: str | None
    ) -> tuple[bytes, str | None]:
        """One page of the tag list (body bytes and the Link header, if any)."""
        query = {k: str(v) for k, v in (("n", n), ("last", last)) if v is not None}
        path = "/tags/list" + (
            "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        )
        async with self._request("GET", name, path, {}) as response:
            body = await self._read_limited(response, 16 * 1024 * 1024)
            return body, response.headers.get("Link")

    async def ping(self) -> None:
        """Raise UpstreamUnavailable unless the registry answers its base endpoint at all.

        Health checks call this often; the answer is reused for PING_CACHE_SECONDS.
        """
        now = time.monotonic()
        if now - self._ping_at < PING_CACHE_SECONDS:
            if self._ping_error is not None:
                raise UpstreamUnavailable(self._ping_error)
            return
        self._ping_at = now
        self._ping_error = None
        count_upstream_request()
        try:
            async with self._session.get(
                f"{self._base}/v2/", timeout=aiohttp.ClientTimeout(total=PING_TIMEOUT)
            ) as response:
                if response.status >= 500:
                    self._ping_error = f"/v2/ answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._ping_error = _describe(exc)
        if self._ping_error is not None:
            raise UpstreamUnavailable(self._ping_error)

    # --- the request machinery ------------------------------------------------------------------

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        name: str,
        path: str,
        headers: dict[str, str],
        *,
        url: str | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One call with retries; ``url`` (a URL an earlier answer came from) replaces the path."""
        try:
            response = await self._send_with_retries(
                method, name, url or f"{self._base}/v2/{name}{path}", headers
            )
            try:
                await _raise_for_status(response, method, f"{name}{path}")
                yield response
            finally:
                response.release()
        except UpstreamError as exc:
            # Failures while the caller reads the body (a broken blob stream) land here too.
            self.backoff.record(exc, name)
            raise

    async def _send_with_retries(
        self, method: str, name: str, url: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        scope = f"repository:{name}:pull"
        attempts = len(self._retry_delays) + 1
        for attempt in range(attempts):
            last_attempt = attempt == attempts - 1
            try:
                response = await self._send_authorized(method, url, scope, headers)
            except UpstreamUnavailable as exc:
                # A timeout already cost the client a full timeout: retrying would multiply the
                # wait. Only failures that happen fast (refused, reset) are worth another try.
                if last_attempt or exc.timed_out:
                    raise
                log.info("upstream.retry", method=method, url=_redact_url(url), reason=exc.detail)
            else:
                if response.status not in _RETRYABLE_STATUS or last_attempt:
                    return response
                response.release()
                log.info(
                    "upstream.retry", method=method, url=_redact_url(url), status=response.status
                )
            await asyncio.sleep(self._retry_delays[attempt] * random.uniform(0.8, 1.2))
        raise AssertionError("unreachable")

    async def _send_authorized(
        self, method: str, url: str, scope: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        authorization = self._auth.cached(scope)
        if authorization is None and self._auth.knows_realm():
            authorization = await self._auth.authorize(scope, None)
        response = await self._send(method, url, headers, authorization)
        if response.status != 401:
            if response.status == 403 and authorization is not None:
                self._refused("registry", 403)
            return response
        # The token is missing, expired or for another scope: take the challenge and try once more.
        challenge = response.headers.get("WWW-Authenticate")
        response.release()
        self._auth.forget(scope)
        authorization = await self._auth.authorize(scope, challenge)
        if authorization is None:
            raise UpstreamDenied(
                "authentication required and the proxy has no upstream credentials "
                "(set PROXY_UPSTREAM_USERNAME and PROXY_UPSTREAM_PASSWORD)",
                status=401,
                code="UNAUTHORIZED",
            )
        response = await self._send(method, url, headers, authorization)
        if response.status in (401, 403):
            # Refused with a fresh token: the account may not pull this (or it does not exist:
            # Docker Hub answers 401 for a repository that is not there).
            self._refused("registry", response.status)
        return response

    async def _send(
        self, method: str, url: str, headers: dict[str, str], authorization: str | None
    ) -> aiohttp.ClientResponse:
        """Send one request, following redirects; Authorization goes only to the registry."""
        for _ in range(MAX_REDIRECTS + 1):
            request_headers = dict(headers)
            if authorization and _origin(url) == self._origin:
                request_headers["Authorization"] = authorization
            count_upstream_request()
            try:
                response = await self._session.request(
                    method,
                    url,
                    headers=request_headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._observe(method, "error")
                error = UpstreamUnavailable(f"{method} {_redact_url(url)}: {_describe(exc)}")
                error.timed_out = isinstance(exc, TimeoutError)
                raise error from exc
            self._observe(method, response.status)
            location = response.headers.get("Location")
            if response.status not in _REDIRECT_STATUS or not location:
                return response
            response.release()
            url = urljoin(url, location)
            if method != "HEAD" and response.status == 303:
                method = "GET"
        raise UpstreamInvalid(f"more than {MAX_REDIRECTS} redirects")

    def _refused(self, stage: str, status: int) -> None:
        if self._observer is not None:
            self._observer.upstream_refused(self.host, stage, status)

    def _observe(self, method: str, status: int | str) -> None:
        if self._observer is not None:
            self._observer.upstream_request(self.host, method, status)

    def _report_rate_limit(self, response: aiohttp.ClientResponse, *, counted: bool) -> None:
        if self._observer is not None:
            self._observer.rate_limit(self.host, RateLimit.from_headers(response.headers), counted)


async def _raise_for_status(response: aiohttp.ClientResponse, method: str, what: str) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    code, message = await _error_body(response) if method != "HEAD" else (None, None)
    detail = f"{method} {what} answered {status}" + (f" {code}: {message}" if code else "")
    if status == 429:
        raise UpstreamRateLimited(detail, retry_after=response.headers.get("Retry-After"))
    if status == 404:
        raise UpstreamNotFound(detail, status=status, code=code)
    if status in (401, 403):
        raise UpstreamDenied(detail, status=status, code=code)
    if status >= 500:
        raise UpstreamUnavailable(detail, status=status, code=code)
    raise UpstreamInvalid(detail, status=status, code=code)


async def _error_body(response: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
    """The first (code, message) of a registry error body, if the body is one."""
    try:
        raw = await response.content.read(64 * 1024)
        errors = json.loads(raw).get("errors") or []
        first = errors[0]
        return str(first.get("code")), str(first.get("message"))
    except Exception:
        return None, None


def _broken(detail: str, exc: BaseException) -> UpstreamUnavailable:
    """A body that broke off mid-way (or went silent: a timeout)."""
    error = UpstreamUnavailable(detail)
    error.timed_out = isinstance(exc, TimeoutError)
    error.dropped = not error.timed_out
    return error


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _redact_url(url: str) -> str:
    """Drop the query string: presigned CDN URLs carry credentials in it."""
    return url.split("?", 1)[0]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


__all__ = [
    "BlobStream",
    "ContentRange",
    "ManifestHead",
    "RateLimit",
    "RegistryClient",
    "UpstreamError",
]
