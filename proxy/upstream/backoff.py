"""When not to ask an upstream again: back-off after rate limits and failures.

Asking an upstream that is over its rate limit or failing only delays builds (a stale tag can be
served at once instead) and, for a 429, prolongs the limit. The client records the outcome of every
call here; the cache asks ``reason(repository)`` before revalidating a tag.

Only what says the upstream *as a whole* is unwell puts every repository into back-off:

- 429: the account's (or address's) quota is spent; until ``Retry-After`` (at most 5 minutes).
- no answer at all (connection refused or reset, timeout): a few seconds.
- 5xx for two different repositories within a short window.

Any other failure (a 5xx for one repository, a manifest that does not match its digest, a 401
or 403) backs off that repository alone: the answer may be about its name (a client can ask for
names the upstream chokes on) and must not stop tag updates for everyone else, but asking again
at once would only repeat it, and a repeated GET is a counted pull each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import cachetools

from proxy.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

FAILURE_SECONDS = 5.0
RATE_LIMIT_DEFAULT_SECONDS = 60.0
RATE_LIMIT_MAX_SECONDS = 300.0
# 5xx answers for this many different repositories within SPREAD_WINDOW mean the upstream is down.
SPREAD_REPOSITORIES = 2
SPREAD_WINDOW = 10.0
MAX_TRACKED_REPOSITORIES = 10_000


class Backoff:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._until = 0.0
        self._reason = ""
        self._repositories: cachetools.TTLCache[str, str] = cachetools.TTLCache(
            MAX_TRACKED_REPOSITORIES, FAILURE_SECONDS, timer=clock
        )
        self._server_errors: cachetools.TTLCache[str, None] = cachetools.TTLCache(
            MAX_TRACKED_REPOSITORIES, SPREAD_WINDOW, timer=clock
        )

    def record(self, exc: UpstreamError, repository: str | None) -> None:
        """Note a failed call (after its retries) about ``repository`` (None: no repository)."""
        if isinstance(exc, UpstreamRateLimited):
            seconds = min(
                retry_after_seconds(exc.retry_after) or RATE_LIMIT_DEFAULT_SECONDS,
                RATE_LIMIT_MAX_SECONDS,
            )
            until = datetime.fromtimestamp(self._wall_clock() + seconds, UTC)
            self._enter(seconds, f"upstream rate limit reached; not asked until {until:%H:%M:%SZ}")
        elif isinstance(exc, UpstreamNotFound):
            return  # an answer, not a failure
        elif isinstance(exc, UpstreamUnavailable) and (exc.status is None or repository is None):
            self._enter(FAILURE_SECONDS, f"{exc.reason}; not asked again for a few seconds")
        elif repository is not None:
            self._repositories[repository] = f"{exc.reason}; not asked again for a few seconds"
            if isinstance(exc, UpstreamUnavailable):  # a 5xx
                self._server_errors[repository] = None
                if len(self._server_errors) >= SPREAD_REPOSITORIES:
                    self._enter(
                        FAILURE_SECONDS, "upstream failing (5xx); not asked again for a few seconds"
                    )

    def reason(self, repository: str) -> str | None:
        """Why not to ask the upstream about ``repository`` right now, or None."""
        if self._clock() < self._until:
            return self._reason
        return self._repositories.get(repository)

    def _enter(self, seconds: float, reason: str) -> None:
        until = self._clock() + seconds
        if until >= self._until:
            self._until = until
            self._reason = reason


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form; registries do not send dates)."""
    if value and value.strip().isascii() and value.strip().isdigit():
        return float(value.strip())
    return None
