"""Registry errors: one table of typed codes, and the exceptions the domain raises with them.

    ErrorCode       every code the proxy answers with: its HTTP status and registry message
    RegistryError   a request the registry refuses, with a code of the table and a detail
    └── NotFound    nothing by that name; which ``*_UNKNOWN`` code is chosen at the edge

Nothing here knows HTTP beyond the status each code stands for: the edge (``proxy.http.errors``)
turns these, the upstream's failures and storage failures into the body registries send,
``{"errors": [{"code", "message", "detail"}]}``. A not-found code depends on what the client
asked for (a manifest, a blob, a repository's tags), which only the edge knows; so the domain
raises ``NotFound`` and the edge picks the code, in one place.
"""

from __future__ import annotations

from enum import Enum, unique


@unique
class ErrorCode(Enum):
    """A registry error code (the member's name, as sent) with its HTTP status and message."""

    NAME_INVALID = 400, "invalid repository name"
    TAG_INVALID = 400, "manifest tag did not match URI"
    DIGEST_INVALID = 400, "provided digest did not match uploaded content"
    MANIFEST_INVALID = 400, "manifest invalid"
    SIZE_INVALID = 400, "provided length did not match content length"
    PAGINATION_NUMBER_INVALID = 400, "invalid number of results requested"
    UNAUTHORIZED = 401, "authentication required"
    DENIED = 403, "requested access to the resource is denied"
    NAME_UNKNOWN = 404, "repository name not known to registry"
    MANIFEST_UNKNOWN = 404, "manifest unknown"
    BLOB_UNKNOWN = 404, "blob unknown to registry"
    NOT_FOUND = 404, "not found"
    UNSUPPORTED = 405, "The operation is unsupported."
    RANGE_INVALID = 416, "requested range not satisfiable"
    TOOMANYREQUESTS = 429, "too many requests"
    UNKNOWN = 500, "unknown error"
    UNAVAILABLE = 503, "service unavailable"

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


# The codes that say something does not exist; an upstream's own one is passed on as it said.
NOT_FOUND_CODES = frozenset(
    {ErrorCode.NAME_UNKNOWN, ErrorCode.MANIFEST_UNKNOWN, ErrorCode.BLOB_UNKNOWN}
)


class RegistryError(Exception):
    """A request the registry refuses: ``code`` from the table, ``detail`` for this request.

    ``message`` replaces the table's message where the client only prints the message and must
    still learn why (``docker pull`` shows a DENIED's message, not its detail).
    """

    def __init__(
        self, code: ErrorCode, detail: str | None = None, *, message: str | None = None
    ) -> None:
        self.code = code
        self.detail = detail
        self.message = message or code.message
        super().__init__(f"{code.name}: {detail or self.message}")


class NotFound(RegistryError):
    """Nothing by that name. The edge answers the code of what was asked for (a manifest:
    MANIFEST_UNKNOWN, a blob: BLOB_UNKNOWN, a tag list: NAME_UNKNOWN, anything else: NOT_FOUND)."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(ErrorCode.NOT_FOUND, detail)
