"""What is known of each upstream account's pull quota, and the warning when it runs low.

Every manifest answer an upstream sends may carry Docker Hub's rate-limit headers
(``ratelimit-limit``, ``ratelimit-remaining``); the upstream client reports them here with whether
the request was a counted pull. ``/status`` and the status page show the result; the warning
(``upstream.quota_low``) is logged when fewer than ``PROXY_QUOTA_WARN_REMAINING`` pulls remain,
and again for every further tenth of that threshold spent, so a draining quota is heard without
a line per pull.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from proxy.upstream.client import RateLimit

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class UpstreamQuota:
    """What we know of one upstream account's pull quota."""

    counted_pulls: int = 0
    rate_limit: RateLimit | None = None
    updated_at: float | None = None
    warned_at_remaining: int | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "counted_pulls": self.counted_pulls,
            "ratelimit": asdict(self.rate_limit) if self.rate_limit else None,
            "updated_at": self.updated_at,
        }


class QuotaTracker:
    """Each upstream's quota, by host; hears the upstream client's rate-limit reports."""

    def __init__(self, *, warn_remaining: int = 10) -> None:
        self.warn_remaining = warn_remaining
        self.quotas: dict[str, UpstreamQuota] = {}

    def get(self, upstream: str) -> UpstreamQuota | None:
        return self.quotas.get(upstream)

    def rate_limit(self, upstream: str, rate_limit: RateLimit | None, counted: bool) -> None:
        quota = self.quotas.setdefault(upstream, UpstreamQuota())
        if counted:
            quota.counted_pulls += 1
        if rate_limit is None:
            return
        quota.rate_limit = rate_limit
        quota.updated_at = time.time()
        if rate_limit.remaining is not None:
            self._warn_if_low(upstream, quota, rate_limit, rate_limit.remaining)

    def _warn_if_low(
        self, upstream: str, quota: UpstreamQuota, rate_limit: RateLimit, remaining: int
    ) -> None:
        """Warn when crossing below the threshold, and again for every further 10% drop."""
        if remaining >= self.warn_remaining:
            quota.warned_at_remaining = None
            return
        step = max(1, self.warn_remaining // 10)
        if quota.warned_at_remaining is None or remaining <= quota.warned_at_remaining - step:
            quota.warned_at_remaining = remaining
            log.warning(
                "upstream.quota_low",
                upstream=upstream,
                remaining=remaining,
                limit=rate_limit.limit,
                window_seconds=rate_limit.window,
                source=rate_limit.source,
            )
