"""Every request the fake hub's apps see, and the counters tests read from them.

A request is recorded (``RecordedRequest``) as it arrives and gets its status when the response
headers go out; ``count``/``matching`` filter the records, the named counters
(``manifest_gets``, ``cdn_gets``, ...) are the questions tests ask most, and ``wait_for`` waits,
bounded, for a condition over them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from multidict import CIMultiDictProxy

ServerName = Literal["registry", "cdn"]
RequestKind = Literal["base", "manifest", "blob", "tags", "referrers", "token", "cdn", "other"]

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
"""A single ``Range: bytes=first-last`` (either end may be missing)."""

_MANIFEST_OR_BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/(?P<what>manifests|blobs)/(?P<ref>[^/]+)$")
_TAGS_PATH = re.compile(r"^/v2/(?P<repo>.+)/tags/list$")
_REFERRERS_PATH = re.compile(r"^/v2/(?P<repo>.+)/referrers/(?P<ref>[^/]+)$")
_CDN_PATH = re.compile(r"^/cdn/(?P<digest>[^/]+)$")


@dataclass
class RecordedRequest:
    """One request seen by either app.

    ``status`` is filled in when the response headers go out; it stays ``None`` for a request
    still being held (gate, hang) or one aborted before any header was sent. ``aborted`` is
    true when the fake cut the connection on purpose (drop_mid_blob, hang at close).
    """

    server: ServerName
    method: str
    path: str
    query: str
    kind: RequestKind
    repo: str | None
    ref: str | None
    """The tag or digest of a manifest request, the digest of a blob or CDN request."""
    headers: CIMultiDictProxy[str]
    status: int | None = None
    aborted: bool = False

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def range(self) -> str | None:
        """The request's Range header, if any."""
        return self.headers.get("Range")

    @property
    def range_start(self) -> int | None:
        """The first byte a ``Range: bytes=N-[M]`` header asks for (None: no such header)."""
        match = RANGE.match((self.range or "").strip())
        return int(match.group(1)) if match and match.group(1) else None


def classify(server: ServerName, path: str) -> tuple[RequestKind, str | None, str | None]:
    """What a request path asks for: its kind, repository and reference."""
    if server == "cdn":
        cdn = _CDN_PATH.match(path)
        return ("cdn", None, cdn.group("digest")) if cdn else ("other", None, None)
    if path in ("/v2", "/v2/"):
        return "base", None, None
    if path == "/token":
        return "token", None, None
    item = _MANIFEST_OR_BLOB_PATH.match(path)
    if item is not None:
        kind: RequestKind = "manifest" if item.group("what") == "manifests" else "blob"
        return kind, item.group("repo"), item.group("ref")
    tags = _TAGS_PATH.match(path)
    if tags is not None:
        return "tags", tags.group("repo"), None
    referrers = _REFERRERS_PATH.match(path)
    if referrers is not None:
        return "referrers", referrers.group("repo"), referrers.group("ref")
    return "other", None, None


class RequestLog:
    """The recorded requests of both apps, in arrival order."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._changed = asyncio.Event()

    def record(self, server: ServerName, request: web.Request) -> RecordedRequest:
        """Record a request as it arrives."""
        kind, repo, ref = classify(server, request.path)
        record = RecordedRequest(
            server=server,
            method=request.method,
            path=request.path,
            query=request.query_string,
            kind=kind,
            repo=repo,
            ref=ref,
            headers=request.headers,
        )
        self.requests.append(record)
        self.notify()
        return record

    def notify(self) -> None:
        """Something ``wait_for`` may be waiting on happened."""
        self._changed.set()

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        server: ServerName | None = "registry",
        *,
        kind: RequestKind | None = None,
        status: int | None = None,
    ) -> int:
        """Recorded requests matching every filter given (``server=None``: both apps)."""
        return len(self.matching(method, path_contains, server, kind=kind, status=status))

    def matching(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        server: ServerName | None = "registry",
        *,
        kind: RequestKind | None = None,
        status: int | None = None,
    ) -> list[RecordedRequest]:
        """The recorded requests ``count`` would count."""
        wanted_method = method.upper() if method is not None else None
        return [
            record
            for record in self.requests
            if (server is None or record.server == server)
            and (wanted_method is None or record.method == wanted_method)
            and (path_contains is None or path_contains in record.path)
            and (kind is None or record.kind == kind)
            and (status is None or record.status == status)
        ]

    def _count_kind(
        self,
        server: ServerName,
        kind: RequestKind,
        method: str,
        repo: str | None,
        ref: str | None,
    ) -> int:
        return sum(
            1
            for record in self.requests
            if record.server == server
            and record.kind == kind
            and record.method == method
            and (repo is None or record.repo == repo)
            and (ref is None or record.ref == ref)
        )

    def manifest_gets(self, repo: str | None = None, ref: str | None = None) -> int:
        """Manifest GETs on the registry (what Docker Hub counts as pulls), any status."""
        return self._count_kind("registry", "manifest", "GET", repo, ref)

    def manifest_heads(self, repo: str | None = None, ref: str | None = None) -> int:
        return self._count_kind("registry", "manifest", "HEAD", repo, ref)

    def blob_gets(self, digest: str | None = None) -> int:
        """Blob GETs on the registry side (each normally answered with a 307)."""
        return self._count_kind("registry", "blob", "GET", None, digest)

    def blob_heads(self, digest: str | None = None) -> int:
        return self._count_kind("registry", "blob", "HEAD", None, digest)

    def cdn_gets(self, digest: str | None = None) -> int:
        """GETs that reached the CDN (blob bytes actually downloaded, or attempted)."""
        return self._count_kind("cdn", "cdn", "GET", None, digest)

    def blob_ranges(self, digest: str, server: ServerName = "cdn") -> list[str | None]:
        """The Range header of each GET of the blob's bytes, in order (None: no Range):
        on the CDN, or on the registry (``server="registry"``) when redirects are off."""
        kind: RequestKind = "cdn" if server == "cdn" else "blob"
        return [
            record.range
            for record in self.requests
            if record.server == server
            and record.kind == kind
            and record.method == "GET"
            and record.ref == digest
            and (server == "cdn" or record.status != 401)
        ]

    def token_requests(self) -> int:
        return sum(1 for record in self.requests if record.kind == "token")

    @property
    def cdn_auth_violations(self) -> int:
        """CDN requests that carried an Authorization header (each answered 400)."""
        return sum(
            1
            for record in self.requests
            if record.server == "cdn" and record.authorization is not None
        )

    def reset_counts(self) -> None:
        """Forget every recorded request (content, tokens and faults stay)."""
        self.requests.clear()

    # Bounded by design, like Fault.wait_hit.
    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever a request arrives, gets
        its status or trips a fault. TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
