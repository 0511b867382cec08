"""Back-off rules (proxy/upstream/backoff.py): what puts every repository on hold, what only one."""

from __future__ import annotations

from support.clock import Clock

from proxy.upstream.backoff import (
    FAILURE_SECONDS,
    RATE_LIMIT_DEFAULT_SECONDS,
    RATE_LIMIT_MAX_SECONDS,
    SPREAD_WINDOW,
    Backoff,
    retry_after_seconds,
)
from proxy.upstream.errors import (
    UpstreamDenied,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)


def backoff() -> tuple[Backoff, Clock]:
    clock = Clock()
    return Backoff(clock=clock, wall_clock=clock), clock


def unreachable(*, timed_out: bool = False) -> UpstreamUnavailable:
    error = UpstreamUnavailable("GET http://upstream/v2/x: refused")
    error.timed_out = timed_out
    return error


def test_rate_limit_holds_every_repository_for_retry_after() -> None:
    hold, clock = backoff()
    hold.record(UpstreamRateLimited("429", retry_after="120"), "library/golang")
    reason = hold.reason("library/other")
    assert reason is not None and reason.startswith("upstream rate limit reached; not asked until")
    clock.now += 119
    assert hold.reason("library/golang") is not None
    clock.now += 2
    assert hold.reason("library/golang") is None


def test_rate_limit_without_retry_after_and_its_ceiling() -> None:
    hold, clock = backoff()
    hold.record(UpstreamRateLimited("429"), "a/b")
    clock.now += RATE_LIMIT_DEFAULT_SECONDS - 1
    assert hold.reason("a/b") is not None
    clock.now += 2
    assert hold.reason("a/b") is None
    hold.record(UpstreamRateLimited("429", retry_after="999999"), "a/b")
    clock.now += RATE_LIMIT_MAX_SECONDS + 1
    assert hold.reason("a/b") is None


def test_no_answer_at_all_holds_every_repository_briefly() -> None:
    for error, phrase in (
        (unreachable(), "upstream unreachable"),
        (unreachable(timed_out=True), "upstream timed out"),
    ):
        hold, clock = backoff()
        hold.record(error, "library/golang")
        assert hold.reason("library/alpine") == f"{phrase}; not asked again for a few seconds"
        clock.now += FAILURE_SECONDS + 0.1
        assert hold.reason("library/alpine") is None


def test_a_5xx_for_one_repository_holds_only_that_repository() -> None:
    hold, clock = backoff()
    hold.record(UpstreamUnavailable("500", status=500), "library/broken")
    assert (
        hold.reason("library/broken") == "upstream answered 500; not asked again for a few seconds"
    )
    assert hold.reason("library/golang") is None
    clock.now += FAILURE_SECONDS + 0.1
    assert hold.reason("library/broken") is None


def test_5xx_for_two_repositories_holds_every_repository() -> None:
    hold, clock = backoff()
    hold.record(UpstreamUnavailable("500", status=500), "a/one")
    clock.now += SPREAD_WINDOW - 1
    hold.record(UpstreamUnavailable("503", status=503), "a/two")
    assert hold.reason("library/golang") is not None
    # ... but not when the two are further apart than the window.
    hold, clock = backoff()
    hold.record(UpstreamUnavailable("500", status=500), "a/one")
    clock.now += SPREAD_WINDOW + 1
    hold.record(UpstreamUnavailable("503", status=503), "a/two")
    assert hold.reason("library/golang") is None


def test_answers_about_one_name_never_hold_the_others() -> None:
    hold, _ = backoff()
    hold.record(UpstreamNotFound("404", status=404), "a/one")
    assert hold.reason("a/one") is None  # a 404 is an answer: no back-off at all
    for error in (UpstreamInvalid("bad digest"), UpstreamDenied("403", status=403)):
        hold.record(error, "a/two")
        hold.record(error, "a/three")
    assert hold.reason("a/two") is not None  # asking again at once would only repeat it
    assert hold.reason("library/golang") is None


def test_a_shorter_failure_does_not_cut_a_rate_limit_short() -> None:
    hold, clock = backoff()
    hold.record(UpstreamRateLimited("429", retry_after="60"), None)
    hold.record(unreachable(), None)
    clock.now += FAILURE_SECONDS + 1
    reason = hold.reason("x/y")
    assert reason is not None and "rate limit" in reason


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds(" 7 ") == 7
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds("²") is None
    assert retry_after_seconds(None) is None
