"""Registry protocol errors: one table of codes and one exception type.

Domain code raises ``RegistryError(code, detail=...)``; the HTTP edge turns it into the body
registries send, ``{"errors": [{"code", "message", "detail"}]}``, with the table's status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class ErrorCode:
    status: int
    message: str


ERROR_CODES: dict[str, ErrorCode] = {
    "NAME_INVALID": ErrorCode(400, "invalid repository name"),
    "TAG_INVALID": ErrorCode(400, "manifest tag did not match URI"),
    "DIGEST_INVALID": ErrorCode(400, "provided digest did not match uploaded content"),
    "MANIFEST_INVALID": ErrorCode(400, "manifest invalid"),
    "SIZE_INVALID": ErrorCode(400, "provided length did not match content length"),
    "PAGINATION_NUMBER_INVALID": ErrorCode(400, "invalid number of results requested"),
    "UNAUTHORIZED": ErrorCode(401, "authentication required"),
    "DENIED": ErrorCode(403, "requested access to the resource is denied"),
    "NAME_UNKNOWN": ErrorCode(404, "repository name not known to registry"),
    "MANIFEST_UNKNOWN": ErrorCode(404, "manifest unknown"),
    "BLOB_UNKNOWN": ErrorCode(404, "blob unknown to registry"),
    "NOT_FOUND": ErrorCode(404, "not found"),
    "UNSUPPORTED": ErrorCode(405, "The operation is unsupported."),
    "RANGE_INVALID": ErrorCode(416, "requested range not satisfiable"),
    "TOOMANYREQUESTS": ErrorCode(429, "too many requests"),
    "UNKNOWN": ErrorCode(500, "unknown error"),
    "UNAVAILABLE": ErrorCode(503, "service unavailable"),
}


class RegistryError(Exception):
    """An error the client should see in the registry error format."""

    def __init__(
        self,
        code: str,
        *,
        detail: str | None = None,
        message: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        entry = ERROR_CODES[code]
        self.code = code
        self.status = status or entry.status
        self.message = message or entry.message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{code}: {detail or self.message}")

    def to_response(self) -> web.Response:
        """The error response (aiohttp sends only the headers when the request was a HEAD)."""
        body = json.dumps(
            {"errors": [{"code": self.code, "message": self.message, "detail": self.detail}]}
        ).encode()
        headers = {"Docker-Distribution-API-Version": "registry/2.0", **self.headers}
        return web.Response(
            status=self.status, body=body, content_type="application/json", headers=headers
        )


def too_many_requests(retry_after: str | None, detail: str) -> RegistryError:
    headers = {"Retry-After": retry_after or "60"}
    return RegistryError("TOOMANYREQUESTS", detail=detail, headers=headers)
