"""Registry errors at the HTTP edge: the one place where a failure becomes an error response.

``error_response`` answers every exception a handler lets out with the body registries send,
``{"errors": [{"code", "message", "detail"}]}``, and the status of its code in the table
(``proxy.registry.errors.ErrorCode``):

    RegistryError   its code; a NotFound the code of what the request asked for
    HttpError       raised by the edge itself: a code, plus headers (a challenge, a Retry-After)
    UpstreamError   the upstream failed and nothing was cached (see _upstream_error)
    StorageError    UNAVAILABLE: the cache storage failed where it could not be a miss
    anything else   UNKNOWN (500), logged with its traceback

Nothing below the edge builds an error response or chooses a not-found code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import structlog
from aiohttp import web

from proxy.registry.errors import NOT_FOUND_CODES, ErrorCode, NotFound, RegistryError
from proxy.registry.reference import Endpoint
from proxy.storage import StorageError
from proxy.upstream.errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
)

log = structlog.get_logger("proxy.access")

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
# What a client is told is missing, by what it asked for (no endpoint: a path outside the API).
NOT_FOUND_BY_ENDPOINT = {
    Endpoint.MANIFEST: ErrorCode.MANIFEST_UNKNOWN,
    Endpoint.BLOB: ErrorCode.BLOB_UNKNOWN,
    Endpoint.TAGS: ErrorCode.NAME_UNKNOWN,
}
# Retry-After of a TOOMANYREQUESTS whose upstream said none, and of an unreachable upstream.
RATE_LIMIT_RETRY_AFTER = "60"
UNAVAILABLE_RETRY_AFTER = "10"


class HttpError(RegistryError):
    """A registry error the edge raises itself, with response headers of its own."""

    def __init__(
        self, code: ErrorCode, detail: str | None = None, *, headers: Mapping[str, str]
    ) -> None:
        super().__init__(code, detail)
        self.headers = dict(headers)


def error_response(exc: Exception, endpoint: Endpoint | None) -> web.Response:
    """The registry error response for ``exc``, raised serving a request for ``endpoint``."""
    if isinstance(exc, UpstreamError):
        return _upstream_error(exc, endpoint)
    if isinstance(exc, NotFound):
        return respond(_not_found_code(endpoint), exc.detail)
    if isinstance(exc, RegistryError):
        headers = exc.headers if isinstance(exc, HttpError) else None
        return respond(exc.code, exc.detail, message=exc.message, headers=headers)
    if isinstance(exc, StorageError):
        log.error("storage.failed", detail=str(exc))
        return respond(ErrorCode.UNAVAILABLE, f"cache storage: {exc}")
    log.exception("request.failed", error=repr(exc))
    return respond(ErrorCode.UNKNOWN, "internal error")


def _upstream_error(exc: UpstreamError, endpoint: Endpoint | None) -> web.Response:
    """What a client hears when the upstream failed and the cache had nothing to serve."""
    detail = f"upstream: {exc.detail}"
    if isinstance(exc, UpstreamRateLimited):
        retry_after = exc.retry_after or RATE_LIMIT_RETRY_AFTER
        return respond(ErrorCode.TOOMANYREQUESTS, detail, headers={"Retry-After": retry_after})
    if isinstance(exc, UpstreamNotFound):
        # The upstream's own not-found code is passed on (NAME_UNKNOWN says more than
        # MANIFEST_UNKNOWN); a HEAD's 404 has none, nor has an answer remembered.
        said = next((code for code in NOT_FOUND_CODES if code.name == exc.code), None)
        return respond(said or _not_found_code(endpoint), detail)
    if isinstance(exc, UpstreamDenied):
        code = ErrorCode.DENIED if exc.status == 403 else ErrorCode.UNAUTHORIZED
        return respond(code, detail)
    if isinstance(exc, UpstreamInvalid):
        # The upstream answered something unusable: a gateway's fault (502), not an outage.
        return respond(ErrorCode.UNAVAILABLE, detail, status=502)
    return respond(ErrorCode.UNAVAILABLE, detail, headers={"Retry-After": UNAVAILABLE_RETRY_AFTER})


def _not_found_code(endpoint: Endpoint | None) -> ErrorCode:
    if endpoint is None:
        return ErrorCode.NOT_FOUND
    return NOT_FOUND_BY_ENDPOINT.get(endpoint, ErrorCode.NOT_FOUND)


def respond(
    code: ErrorCode,
    detail: str | None = None,
    *,
    message: str | None = None,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The error response (aiohttp sends only the headers when the request was a HEAD)."""
    body = json.dumps(
        {"errors": [{"code": code.name, "message": message or code.message, "detail": detail}]}
    ).encode()
    return web.Response(
        status=status or code.status,
        body=body,
        content_type="application/json",
        headers={**API_VERSION, **(headers or {})},
    )
