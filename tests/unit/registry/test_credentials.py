"""proxy/registry/credentials.py: Basic credentials, encoded and decoded in one place."""

from __future__ import annotations

import base64

import pytest

from proxy.registry.credentials import basic_authorization, basic_credentials


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "pw"), ("bot", "a:b:c"), ("", ""), ("ünï", "pässwörd")]
)
def test_what_is_encoded_decodes_back(user: str, password: str) -> None:
    header = basic_authorization(user, password)
    assert header.startswith("Basic ")
    assert basic_credentials(header) == (user, password)
    assert basic_credentials("basic " + header.split(" ", 1)[1]) == (user, password)


def encoded(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Bearer abc",
        "Basic not*base64",
        encoded(b"no colon"),
        encoded(b"\xff\xfe:bytes that are not UTF-8"),
    ],
)
def test_anything_else_is_no_credentials(header: str | None) -> None:
    assert basic_credentials(header) is None
