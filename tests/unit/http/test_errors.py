"""proxy/http/errors.py: every failure becomes one registry error response, in one place."""

from __future__ import annotations

import json

import pytest

from proxy.http.errors import HttpError, error_response
from proxy.registry.errors import ErrorCode, NotFound, RegistryError
from proxy.registry.reference import Endpoint
from proxy.storage import StorageError
from proxy.upstream.errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)


def answer(
    exc: Exception, endpoint: Endpoint | None = Endpoint.MANIFEST
) -> tuple[int, dict[str, str], dict[str, str | None]]:
    response = error_response(exc, endpoint)
    assert isinstance(response.body, bytes)
    assert response.content_type == "application/json"
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    (error,) = json.loads(response.body)["errors"]
    return response.status, dict(response.headers), error


@pytest.mark.parametrize(
    ("endpoint", "code"),
    [
        (Endpoint.MANIFEST, "MANIFEST_UNKNOWN"),
        (Endpoint.BLOB, "BLOB_UNKNOWN"),
        (Endpoint.TAGS, "NAME_UNKNOWN"),
        (Endpoint.REFERRERS, "NOT_FOUND"),
        (None, "NOT_FOUND"),
    ],
)
def test_a_not_found_answers_the_code_of_what_was_asked(
    endpoint: Endpoint | None, code: str
) -> None:
    for exc in (NotFound("gone"), UpstreamNotFound("HEAD answered 404", status=404)):
        status, _, error = answer(exc, endpoint)
        assert (status, error["code"]) == (404, code)


def test_the_upstreams_own_not_found_code_is_passed_on() -> None:
    said = UpstreamNotFound("GET answered 404", status=404, code="NAME_UNKNOWN")
    assert answer(said, Endpoint.MANIFEST)[2]["code"] == "NAME_UNKNOWN"
    odd = UpstreamNotFound("GET answered 404", status=404, code="NOT_FOUND")
    assert answer(odd, Endpoint.BLOB)[2]["code"] == "BLOB_UNKNOWN"


def test_a_registry_error_answers_its_code_from_the_table() -> None:
    status, _, error = answer(RegistryError(ErrorCode.NAME_INVALID, "invalid repository name: 'A'"))
    assert status == 400
    assert error == {
        "code": "NAME_INVALID",
        "message": "invalid repository name",
        "detail": "invalid repository name: 'A'",
    }
    _, _, denied = answer(RegistryError(ErrorCode.DENIED, "why", message="refused: why"))
    assert (denied["code"], denied["message"]) == ("DENIED", "refused: why")


def test_the_edge_adds_headers_of_its_own() -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="registry-proxy"'}
    status, headers, error = answer(HttpError(ErrorCode.UNAUTHORIZED, "log in", headers=challenge))
    assert (status, error["code"]) == (401, "UNAUTHORIZED")
    assert headers["WWW-Authenticate"] == 'Basic realm="registry-proxy"'


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (UpstreamRateLimited("429", retry_after="42"), 429, "TOOMANYREQUESTS", "42"),
        (UpstreamRateLimited("429"), 429, "TOOMANYREQUESTS", "60"),
        (UpstreamDenied("403", status=403), 403, "DENIED", None),
        (UpstreamDenied("401", status=401), 401, "UNAUTHORIZED", None),
        (UpstreamInvalid("digest mismatch"), 502, "UNAVAILABLE", None),
        (UpstreamUnavailable("timed out"), 503, "UNAVAILABLE", "10"),
        (UpstreamUnavailable("answered 500", status=500), 503, "UNAVAILABLE", "10"),
        (UpstreamError("other"), 503, "UNAVAILABLE", "10"),
    ],
)
def test_an_upstream_failure_with_nothing_cached(
    exc: UpstreamError, status: int, code: str, retry_after: str | None
) -> None:
    got_status, headers, error = answer(exc)
    assert (got_status, error["code"], headers.get("Retry-After")) == (status, code, retry_after)
    assert error["detail"] == f"upstream: {exc.detail}"


def test_storage_and_unexpected_failures() -> None:
    status, _, error = answer(StorageError("bucket gone"))
    assert (status, error["code"], error["detail"]) == (
        503,
        "UNAVAILABLE",
        "cache storage: bucket gone",
    )
    status, _, error = answer(ZeroDivisionError("bug"))
    assert (status, error["code"], error["detail"]) == (500, "UNKNOWN", "internal error")
