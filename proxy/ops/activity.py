"""What this instance has been doing: the figures an operator reads on the status page.

Prometheus counters are made for scraping, not for reading back, and the status page also wants
things a counter cannot hold (the last stale serves, the most pulled repositories, counted pulls
per minute). ``Activity`` keeps them as plain numbers and small bounded collections, updated on
the request path at the cost of a few integer additions. ``snapshot()`` turns them into the JSON
record each instance publishes for the fleet (``proxy.ops.fleet``).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.upstream.client import RateLimit

# Counted pulls are kept per minute for this long (the page's chart).
HISTORY_MINUTES = 6 * 60
# The most pulled repositories are counted for at most this many names; the rarest are dropped
# when it overflows, so a scan of random names cannot grow memory.
MAX_REPOSITORIES = 1000
TOP_REPOSITORIES = 10
RECENT_EVENTS = 20


@dataclass(slots=True)
class RateReading:
    """The last rate-limit headers an upstream sent, and when."""

    limit: int | None
    remaining: int | None
    window: int | None
    source: str | None
    at: float


@dataclass(slots=True)
class UpstreamActivity:
    counted_pulls: int = 0
    errors: int = 0
    rate: RateReading | None = None
    # Minute (epoch seconds // 60) -> counted pulls in that minute.
    pulls_by_minute: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class Activity:
    clock: Callable[[], float] = time.time
    started_at: float = field(default_factory=time.time)
    hits: int = 0
    misses: int = 0
    stale: int = 0
    bytes_from_cache: int = 0
    bytes_from_upstream: int = 0
    upstreams: dict[str, UpstreamActivity] = field(default_factory=dict)
    repositories: Counter[str] = field(default_factory=Counter)
    recent_stale: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    recent_errors: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_EVENTS)
    )

    # --- what it hears (through proxy.ops.observers) ---------------------------------------------

    def observe_request(
        self,
        route: str,
        cache: str,
        repository: str | None,
        reference: str | None,
        warning: str | None,
    ) -> None:
        """A client request answered: a cache result, a pull by tag, a stale serve."""
        if cache == "-":
            return
        self.cache_result(cache)
        if route == "manifest" and repository and reference and ":" not in reference:
            self.pulled(repository)  # a pull by tag
        if cache == "stale" and repository and reference:
            self.stale_served(repository, reference, warning)

    def upstream_request(self, host: str, method: str, status: int | str) -> None:
        """An upstream answer; the page lists failures (no answer, 429, 5xx)."""
        if status == "error" or (isinstance(status, int) and (status == 429 or status >= 500)):
            self.upstream_failed(host, method, status)

    def rate_limit(self, host: str, rate_limit: RateLimit | None, counted: bool) -> None:
        """A manifest answer: a counted pull or not, and the rate-limit headers it carried."""
        if counted:
            self.counted_pull(host)
        if rate_limit is not None:
            self.upstream(host).rate = RateReading(
                rate_limit.limit,
                rate_limit.remaining,
                rate_limit.window,
                rate_limit.source,
                self.clock(),
            )

    # --- recording (the request path) -----------------------------------------------------------

    def cache_result(self, result: str) -> None:
        if result == "hit":
            self.hits += 1
        elif result == "miss":
            self.misses += 1
        elif result == "stale":
            self.stale += 1

    def stale_served(self, repository: str, reference: str, warning: str | None) -> None:
        self.recent_stale.appendleft(
            {"at": self.clock(), "repository": repository, "reference": reference, "why": warning}
        )

    def pulled(self, repository: str) -> None:
        """A manifest was asked for: one pull of ``repository`` by a client."""
        self.repositories[repository] += 1
        if len(self.repositories) > MAX_REPOSITORIES:
            # Keep the most pulled half; a long tail of one-off names is not worth memory.
            keep = self.repositories.most_common(MAX_REPOSITORIES // 2)
            self.repositories = Counter(dict(keep))

    def served_bytes(self, from_cache: bool, count: int) -> None:
        if from_cache:
            self.bytes_from_cache += count
        else:
            self.bytes_from_upstream += count

    def upstream(self, host: str) -> UpstreamActivity:
        found = self.upstreams.get(host)
        if found is None:
            found = self.upstreams[host] = UpstreamActivity()
        return found

    def counted_pull(self, host: str) -> None:
        upstream = self.upstream(host)
        upstream.counted_pulls += 1
        minute = int(self.clock() // 60)
        upstream.pulls_by_minute[minute] = upstream.pulls_by_minute.get(minute, 0) + 1
        if len(upstream.pulls_by_minute) > HISTORY_MINUTES:
            oldest = minute - HISTORY_MINUTES
            for key in [k for k in upstream.pulls_by_minute if k <= oldest]:
                del upstream.pulls_by_minute[key]

    def upstream_failed(self, host: str, method: str, status: int | str) -> None:
        self.upstream(host).errors += 1
        self.recent_errors.appendleft(
            {"at": self.clock(), "upstream": host, "method": method, "status": str(status)}
        )

    # --- the published record -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This instance's figures as JSON-able data (what ``proxy.ops.fleet`` publishes)."""
        since = int(self.clock() // 60) - HISTORY_MINUTES
        return {
            "started_at": self.started_at,
            "hits": self.hits,
            "misses": self.misses,
            "stale": self.stale,
            "bytes_from_cache": self.bytes_from_cache,
            "bytes_from_upstream": self.bytes_from_upstream,
            "upstreams": {
                host: {
                    "counted_pulls": u.counted_pulls,
                    "errors": u.errors,
                    "ratelimit": None
                    if u.rate is None
                    else {
                        "limit": u.rate.limit,
                        "remaining": u.rate.remaining,
                        "window": u.rate.window,
                        "source": u.rate.source,
                        "at": u.rate.at,
                    },
                    "pulls_by_minute": {
                        str(minute): count
                        for minute, count in sorted(u.pulls_by_minute.items())
                        if minute > since
                    },
                }
                for host, u in self.upstreams.items()
            },
            "repositories": dict(self.repositories.most_common(TOP_REPOSITORIES * 5)),
            "recent_stale": list(self.recent_stale),
            "recent_errors": list(self.recent_errors),
        }
