"""Parsing the registry's ``WWW-Authenticate`` challenge (``proxy.upstream.auth``).

What the token request is built from comes out of this header, so odd but valid quoting must
give the values the registry meant: commas and ``=`` inside quotes, escaped quotes and
backslashes, spaces around ``=``, any case for names and the scheme, unquoted values.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.auth import Challenge, parse_challenge

DOCKER_HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/golang:pull"'
)


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            DOCKER_HUB,
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/golang:pull",
            },
        ),
        # A comma inside quotes belongs to the value (several actions in one scope).
        (
            'Bearer realm="https://a/token",scope="repository:a/b:pull,push"',
            "bearer",
            {"realm": "https://a/token", "scope": "repository:a/b:pull,push"},
        ),
        ('Bearer realm="a,b=c",service="x"', "bearer", {"realm": "a,b=c", "service": "x"}),
        # Escapes: \" is a quote, \\ a backslash, \x an x; the quote does not end the value.
        (
            'Bearer realm="say \\"hi\\", service=evil"',
            "bearer",
            {"realm": 'say "hi", service=evil'},
        ),
        ('Bearer realm="a\\\\b"', "bearer", {"realm": "a\\b"}),
        ('Bearer realm="a\\xb"', "bearer", {"realm": "axb"}),
        # Names and scheme in any case, spaces around '=' and ',', unquoted values.
        (
            'BEARER Realm = "https://a/token" ,  SERVICE=reg.io',
            "bearer",
            {"realm": "https://a/token", "service": "reg.io"},
        ),
        (
            'Bearer realm=https://a/token,error="insufficient_scope"',
            "bearer",
            {"realm": "https://a/token", "error": "insufficient_scope"},
        ),
        ('Bearer realm="r" service="s"', "bearer", {"realm": "r", "service": "s"}),
        ('Bearer realm="",service=x', "bearer", {"realm": "", "service": "x"}),
        ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
        ("Bearer", "bearer", {}),
        ("  Bearer   ", "bearer", {}),
    ],
)
def test_challenges(header: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_challenge(header) == Challenge(scheme, params)


@pytest.mark.parametrize("header", ["", "   "])
def test_no_challenge(header: str) -> None:
    assert parse_challenge(header) is None


def test_an_unterminated_quote_gives_no_http_realm() -> None:
    """Malformed: whatever comes out must not look like a usable realm URL."""
    challenge = parse_challenge('Bearer realm="https://a/token, service=x')
    assert challenge is not None
    assert not challenge.params.get("realm", "").startswith(("http://", "https://"))


@given(
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(["realm", "service", "scope"]),
)
def test_any_quoted_value_comes_back_exactly(value: str, name: str) -> None:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    challenge = parse_challenge(f'Bearer {name}="{quoted}",other="x"')
    assert challenge is not None
    assert challenge.params[name] == value
    assert challenge.params["other"] == "x"
