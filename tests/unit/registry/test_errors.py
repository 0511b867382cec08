"""proxy/registry/errors.py: the table of registry error codes, each with its status and message.
How a failure becomes a response: tests/unit/http/test_errors.py.
"""

from __future__ import annotations

from proxy.registry.errors import ErrorCode, NotFound, RegistryError


def test_every_code_has_its_status_and_message() -> None:
    for code in ErrorCode:
        assert 400 <= code.status < 600 and code.message
    assert ErrorCode.MANIFEST_UNKNOWN.status == 404


def test_an_error_carries_its_code_and_detail_and_may_say_more_than_the_table() -> None:
    plain = RegistryError(ErrorCode.DENIED, "repository library/x")
    assert (plain.code, plain.detail, plain.message) == (
        ErrorCode.DENIED,
        "repository library/x",
        ErrorCode.DENIED.message,
    )
    assert str(plain) == "DENIED: repository library/x"
    told = RegistryError(ErrorCode.DENIED, message="library/x is refused by this proxy")
    assert told.message == "library/x is refused by this proxy"
    assert str(told) == "DENIED: library/x is refused by this proxy"
    missing = NotFound("library/x:nothing")
    assert isinstance(missing, RegistryError)
    assert (missing.code, missing.detail) == (ErrorCode.NOT_FOUND, "library/x:nothing")
