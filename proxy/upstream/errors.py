"""What can go wrong talking to an upstream registry.

    UpstreamError             base; carries the upstream's status, error code and message
    ├── UpstreamUnavailable   could not connect, timed out, 5xx, or a broken stream
    ├── UpstreamRateLimited   429: the account or address is over its pull limit
    ├── UpstreamNotFound      404: the repository, manifest or blob does not exist
    ├── UpstreamDenied        401/403 even with the proxy's credentials
    └── UpstreamInvalid       the upstream answered something unusable (bad digest, too large)

``detail`` says what happened to this request (for logs and for the client that made it);
``reason`` is a fixed phrase without anything taken from the request, safe to show to *other*
clients (the ``Warning`` header of a stale answer is shared by everyone waiting on a fetch).

``status`` and ``code`` are what the upstream answered (its HTTP status, and the code of its
registry error body when it sent one; a HEAD's answer has no body), never a choice of ours. The
cache uses the type to decide whether serving stale content is allowed; the HTTP edge
(``proxy.http.errors``) turns what reaches a client into a registry error.
"""

from __future__ import annotations


class UpstreamError(Exception):
    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code

    @property
    def reason(self) -> str:
        if self.status is not None:
            return f"upstream answered {self.status}"
        return "upstream failed"


class UpstreamUnavailable(UpstreamError):
    #: The upstream did not answer in time (as opposed to refusing or resetting).
    timed_out = False
    #: The response started but its body broke off.
    dropped = False

    @property
    def reason(self) -> str:
        if self.status is not None:
            return f"upstream answered {self.status}"
        if self.dropped:
            return "upstream connection dropped"
        return "upstream timed out" if self.timed_out else "upstream unreachable"


class UpstreamRateLimited(UpstreamError):
    def __init__(self, detail: str, *, retry_after: str | None = None) -> None:
        super().__init__(detail, status=429, code="TOOMANYREQUESTS")
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return "upstream rate limit reached"


class UpstreamNotFound(UpstreamError):
    pass


class UpstreamDenied(UpstreamError):
    pass


class UpstreamInvalid(UpstreamError):
    @property
    def reason(self) -> str:
        if self.status is not None:
            return f"upstream answered {self.status}"
        return "upstream sent unusable content"
