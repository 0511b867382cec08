"""proxy/upstream/errors.py: what each failure tells other clients (``reason``) is a fixed phrase,
never anything taken from the request that failed (a stale answer's Warning is shared by every
client waiting on the fetch)."""

from __future__ import annotations

from proxy.upstream.errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

DETAIL = "GET /v2/evil<script>/manifests/x: something a client chose"


def test_reasons_are_fixed_phrases_without_the_detail() -> None:
    timed_out = UpstreamUnavailable(DETAIL)
    timed_out.timed_out = True
    dropped = UpstreamUnavailable(DETAIL)
    dropped.dropped = True
    reasons = {
        UpstreamError(DETAIL): "upstream failed",
        UpstreamUnavailable(DETAIL): "upstream unreachable",
        timed_out: "upstream timed out",
        dropped: "upstream connection dropped",
        UpstreamUnavailable(DETAIL, status=503): "upstream answered 503",
        UpstreamRateLimited(DETAIL, retry_after="60"): "upstream rate limit reached",
        UpstreamNotFound(DETAIL, status=404): "upstream answered 404",
        UpstreamDenied(DETAIL, status=401): "upstream answered 401",
        UpstreamInvalid(DETAIL): "upstream sent unusable content",
        UpstreamInvalid(DETAIL, status=200): "upstream answered 200",
    }
    for error, reason in reasons.items():
        assert error.reason == reason, error
        assert error.detail == str(error) == DETAIL


def test_a_rate_limit_is_a_429_with_its_retry_after() -> None:
    error = UpstreamRateLimited(DETAIL, retry_after="42")
    assert (error.status, error.code, error.retry_after) == (429, "TOOMANYREQUESTS", "42")
