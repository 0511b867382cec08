"""The fake hub's registry: the distribution API, its token service and its rate limit.

``/v2/``, manifests (GET/HEAD), blobs (GET/HEAD; a GET answers 307 to the CDN unless redirects
are off), tags lists, OCI 1.1 referrers (``referrers_api=True``; otherwise 404 as from Docker
Hub and distribution 2.8) and ``/token``, with Docker Hub style bearer-token auth (tokens bound to
their repositories, expiring by the hub's clock) and rate-limit headers on manifests.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.registry.credentials import basic_credentials
from support.fakehub.content import OCI_INDEX
from support.fakehub.records import RecordedRequest
from support.fakehub.serving import App, error_response

if TYPE_CHECKING:
    from support.fakehub.hub import FakeHub

SERVICE = "registry.docker.io"
"""The ``service`` Docker Hub names in its challenges; /token insists on it."""


@dataclass
class IssuedToken:
    """A bearer token handed out by /token (or ``issue_token``)."""

    token: str
    username: str | None
    repositories: frozenset[str]
    expires_at: float
    """In the hub's ``clock`` time."""
    revoked: bool = False


class Registry(App):
    name = "registry"

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(hub)
        self.tokens: dict[str, IssuedToken] = {}

    # ------------------------------------------------------------------ tokens

    def issue_token(self, repositories: Iterable[str], *, username: str | None = None) -> str:
        """Mint a token allowing pulls of ``repositories`` (what /token does)."""
        token = secrets.token_urlsafe(24)
        self.tokens[token] = IssuedToken(
            token=token,
            username=username,
            repositories=frozenset(repositories),
            expires_at=self.hub.clock() + self.hub.token_ttl,
        )
        return token

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far (the registry answers 401 invalid_token)."""
        for issued in self.tokens.values():
            issued.revoked = True

    def challenge(self, repo: str | None, error: str | None) -> str:
        """The ``WWW-Authenticate`` value of a 401 (``error``: why the token was refused)."""
        value = f'Bearer realm="{self.hub.token_url}",service="{SERVICE}"'
        if repo is not None:
            value += f',scope="repository:{repo}:pull"'
        if error is not None:
            value += f',error="{error}"'
        return value

    def rate_headers(self, identity: str | None) -> dict[str, str]:
        """Docker Hub's rate-limit headers (none when the hub has no limit)."""
        hub = self.hub
        if hub.rate_limit is None:
            return {}
        source = hub.rate_limit_source or identity or hub.host
        return {
            "ratelimit-limit": f"{hub.rate_limit};w={hub.rate_window}",
            "ratelimit-remaining": f"{max(hub.rate_remaining, 0)};w={hub.rate_window}",
            "docker-ratelimit-source": source,
        }

    def _check_token(
        self, request: web.Request, repo: str | None
    ) -> tuple[IssuedToken | None, str | None]:
        """(token, None) when allowed; (None, "" or error name) when not."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None, ""
        issued = self.tokens.get(credential.strip())
        if issued is None or issued.revoked or self.hub.clock() >= issued.expires_at:
            return None, "invalid_token"
        if repo is not None and repo not in issued.repositories:
            return None, "insufficient_scope"
        return issued, None

    # ------------------------------------------------------------------ requests

    def finish(self, record: RecordedRequest, response: web.StreamResponse) -> None:
        if not response.prepared:
            response.headers.setdefault("Docker-Distribution-Api-Version", "registry/2.0")
        super().finish(record, response)

    async def dispatch(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if record.kind == "token":
            held = await self.faults_before_response(request, record)
            return held if held is not None else self._token(request)

        if record.kind == "referrers" and not self.hub.referrers_api:
            # As Docker Hub and distribution 2.8: no such route, before any authentication.
            return web.Response(status=404, text="404 page not found\n")
        identity: str | None = request.remote
        if self.hub.require_auth and record.kind != "other":
            issued, problem = self._check_token(request, record.repo)
            if issued is None:
                return error_response(
                    401,
                    "UNAUTHORIZED",
                    headers={"WWW-Authenticate": self.challenge(record.repo, problem or None)},
                    detail=[
                        {"Type": "repository", "Class": "", "Name": record.repo, "Action": "pull"}
                    ]
                    if record.repo is not None
                    else None,
                )
            identity = issued.username or identity

        held = await self.faults_before_response(request, record)
        if held is not None:
            return held
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "UNSUPPORTED")
        if record.kind == "base":
            return web.json_response({})
        if record.kind == "manifest":
            return await self._manifest(request, record, identity)
        if record.kind == "blob":
            return await self._blob(request, record)
        if record.kind == "tags":
            return self._tags(request, record)
        if record.kind == "referrers":
            return self._referrers(request, record)
        return error_response(404, "NOT_FOUND")

    def _token(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return web.json_response({"details": "method not allowed"}, status=405)
        if request.query.get("service") != SERVICE:
            return web.json_response({"details": f"service must be {SERVICE}"}, status=400)
        username: str | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            credentials = basic_credentials(header)
            if credentials is None:
                return web.json_response({"details": "malformed credentials"}, status=401)
            login, password = credentials
            if login not in self.hub.users or self.hub.users[login] != password:
                return web.json_response({"details": "incorrect username or password"}, status=401)
            username = login
        elif not self.hub.allow_anonymous:
            return web.json_response({"details": "authentication required"}, status=401)

        repositories: set[str] = set()
        for scope in request.query.getall("scope", []):
            for item in scope.split():
                parts = item.split(":")
                if len(parts) >= 3 and parts[0] == "repository" and "pull" in parts[-1].split(","):
                    repositories.add(":".join(parts[1:-1]))
        token = self.issue_token(repositories, username=username)
        issued_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.hub.token_ttl,
                "issued_at": issued_at,
            }
        )

    async def _manifest(
        self, request: web.Request, record: RecordedRequest, identity: str | None
    ) -> web.StreamResponse:
        assert record.repo is not None and record.ref is not None
        hub = self.hub
        rate_headers = self.rate_headers(identity)
        if record.repo not in hub.repositories:
            return error_response(404, "NAME_UNKNOWN", headers=rate_headers)
        stored = hub.get_manifest(record.repo, record.ref)
        if stored is None:
            return error_response(404, "MANIFEST_UNKNOWN", headers=rate_headers)
        is_get = request.method == "GET"
        if is_get and hub.rate_limit is not None and hub.rate_remaining <= 0:
            return error_response(
                429,
                "TOOMANYREQUESTS",
                headers={**rate_headers, "Retry-After": str(hub.retry_after)},
            )
        headers = {"Content-Type": stored.media_type, "ETag": f'"{stored.digest}"'}
        if hub.take_fault(record, "no_digest_header") is None:
            headers["Docker-Content-Digest"] = stored.digest
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers={**headers, **rate_headers})
        if is_get and hub.rate_limit is not None:
            hub.rate_remaining -= 1
            rate_headers = self.rate_headers(identity)
        headers.update(rate_headers)
        return await self.send_body(request, record, stored.data, headers)

    async def _blob(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        assert record.repo is not None and record.ref is not None
        if record.repo not in self.hub.repositories:
            return error_response(404, "NAME_UNKNOWN")
        data = self.hub.blob_in(record.repo, record.ref)
        if data is None:
            return error_response(404, "BLOB_UNKNOWN")
        if request.method == "GET" and self.hub.redirect_blobs:
            return web.Response(status=307, headers={"Location": self.hub.cdn_blob_url(record.ref)})
        headers = {"Content-Type": "application/octet-stream"}
        if self.hub.take_fault(record, "no_digest_header") is None:
            headers["Docker-Content-Digest"] = record.ref
        return await self.send_body(request, record, data, headers)

    def _tags(self, request: web.Request, record: RecordedRequest) -> web.Response:
        assert record.repo is not None
        repository = self.hub.repositories.get(record.repo)
        if repository is None:
            return error_response(404, "NAME_UNKNOWN")
        tags = sorted(repository.tags)
        last = request.query.get("last")
        if last:
            again = self.hub.tags_list_includes_last
            tags = [tag for tag in tags if tag > last or (again and tag == last)]
        headers: dict[str, str] = {}
        raw_n = request.query.get("n")
        if raw_n is not None:
            try:
                n = int(raw_n)
            except ValueError:
                n = -1
            if n < 0:
                return error_response(400, "PAGINATION_NUMBER_INVALID")
            if len(tags) > n > 0:
                headers["Link"] = (
                    f'</v2/{record.repo}/tags/list?n={n}&last={tags[n - 1]}>; rel="next"'
                )
            tags = tags[:n]
        return web.json_response({"name": record.repo, "tags": tags}, headers=headers)

    def _referrers(self, request: web.Request, record: RecordedRequest) -> web.Response:
        assert record.repo is not None and record.ref is not None
        if request.method != "GET":
            return error_response(405, "UNSUPPORTED")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", record.ref):
            return error_response(400, "DIGEST_INVALID")
        descriptors = self.hub.referrers(record.repo, record.ref)
        headers: dict[str, str] = {}
        artifact_type = request.query.get("artifactType")
        if artifact_type:
            descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
            headers["OCI-Filters-Applied"] = "artifactType"
        size = self.hub.referrers_page_size
        if size is not None:
            start = int(request.query.get("page", "0"))
            if start + size < len(descriptors):
                query = f"page={start + size}" + (
                    f"&artifactType={artifact_type}" if artifact_type else ""
                )
                headers["Link"] = f'</v2/{record.repo}/referrers/{record.ref}?{query}>; rel="next"'
            descriptors = descriptors[start : start + size]
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return web.json_response(body, headers=headers, content_type=OCI_INDEX)
