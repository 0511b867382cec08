"""Access control through the app: client networks, X-Forwarded-For from trusted proxies, logins,
operator endpoints, open health checks. The address rules on their own:
tests/unit/http/test_access.py."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import pytest
from multidict import CIMultiDict
from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory

from proxy.config import load_settings, parse_networks


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"# proxy users\nci:{hashed}\n")
    return path


async def test_login_required_when_users_are_configured(
    fakehub: FakeHub, make_proxy: ProxyFactory, htpasswd: Path
) -> None:
    image = fakehub.add_image("library/golang", "1")
    users = load_settings({"PROXY_AUTH_HTPASSWD": str(htpasswd)}).access.htpasswd_users
    client = await make_proxy(fakehub, htpasswd_users=users, auth_tokens=frozenset({"tok-1"}))
    anonymous = await client.get("/v2/")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="registry-proxy"'
    assert (await anonymous.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert (await client.get("/v2/", headers=basic("ci", "wrong"))).status == 401
    assert (await client.get("/v2/", headers=basic("nobody", "s3cret"))).status == 401
    assert (await client.get("/v2/", headers={"Authorization": "Basic !!!"})).status == 401
    for headers in (basic("ci", "s3cret"), {"Authorization": "Bearer tok-1"}, basic("x", "tok-1")):
        response = await client.get("/v2/library/golang/manifests/1", headers=headers)
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == image.digest
    # Health stays open for the load balancer.
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert fakehub.count(server=None, kind="manifest") > 0


async def test_client_networks(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    client = await make_proxy(fakehub, allow_cidrs=parse_networks("10.0.0.0/8"))
    denied = await client.get("/v2/")
    assert denied.status == 403
    assert (await denied.json())["errors"][0]["code"] == "DENIED"
    # X-Forwarded-For is not trusted from an untrusted peer.
    spoofed = await client.get("/v2/", headers={"X-Forwarded-For": "10.1.2.3"})
    assert spoofed.status == 403
    assert (await client.get("/healthz")).status == 200


async def test_forwarded_for_from_trusted_balancer(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(
        fakehub,
        allow_cidrs=parse_networks("10.0.0.0/8"),
        trusted_proxies=parse_networks("127.0.0.0/8"),
    )
    assert (await client.get("/v2/", headers={"X-Forwarded-For": "10.1.2.3"})).status == 200
    # The client's own claim on the left is ignored; the balancer appended the real address.
    header = {"X-Forwarded-For": "10.9.9.9, 192.0.2.1"}
    assert (await client.get("/v2/", headers=header)).status == 403


async def test_anonymous_networks_skip_login(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    client = await make_proxy(
        fakehub, auth_tokens=frozenset({"tok"}), anonymous_cidrs=parse_networks("127.0.0.1/32")
    )
    assert (await client.get("/v2/")).status == 200


async def test_forged_forwarded_for_from_inside_the_trusted_range_is_not_believed(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """Clients live in the trusted range too (CodeBuild and the load balancer share a VPC).

    The balancer here is 127.0.0.1 and the whole 127.0.0.0/8 is trusted; a client at 127.0.0.9,
    which is not allowed, claims an allowed address. The balancer appends the address it really
    saw, and that last entry is the only one believed.
    """
    client = await make_proxy(
        fakehub,
        allow_cidrs=parse_networks("10.50.0.0/16"),
        anonymous_cidrs=parse_networks("10.50.0.0/16"),
        auth_tokens=frozenset({"tok"}),
        trusted_proxies=parse_networks("127.0.0.0/8"),
    )
    forged = await client.get("/v2/", headers={"X-Forwarded-For": "10.50.0.7, 127.0.0.9"})
    assert forged.status == 403
    assert "127.0.0.9" in (await forged.json())["errors"][0]["detail"]
    # ... nor does a longer chain of trusted-looking hops get it past the check
    header = {"X-Forwarded-For": "10.50.0.7, 127.0.0.8, 127.0.0.9"}
    assert (await client.get("/v2/", headers=header)).status == 403
    # the genuine client from the allowed (and login-free) network
    assert (await client.get("/v2/", headers={"X-Forwarded-For": "10.50.0.7"})).status == 200


async def test_forwarded_for_is_read_from_all_its_header_lines(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    """A front that adds a header line of its own (HAProxy's ``option forwardfor``) instead of
    appending to the client's: the lines are one list, in order (RFC 9110, 5.3), so the last
    entry of the last line is what the balancer saw, whatever the client's own line says."""
    client = await make_proxy(
        fakehub,
        allow_cidrs=parse_networks("10.9.0.0/16"),
        trusted_proxies=parse_networks("127.0.0.0/8"),
    )
    forged = CIMultiDict([("X-Forwarded-For", "10.9.0.1"), ("X-Forwarded-For", "192.0.2.7")])
    denied = await client.get("/v2/", headers=forged)
    assert denied.status == 403
    assert "192.0.2.7" in (await denied.json())["errors"][0]["detail"]
    several = CIMultiDict(
        [("X-Forwarded-For", "10.9.0.1, 192.0.2.8"), ("X-Forwarded-For", "192.0.2.7")]
    )
    assert (await client.get("/v2/", headers=several)).status == 403
    # the same lists on one line, and a genuine client on either form
    assert (
        await client.get("/v2/", headers={"X-Forwarded-For": "10.9.0.1, 192.0.2.7"})
    ).status == 403
    genuine = CIMultiDict([("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-For", "10.9.0.1")])
    assert (await client.get("/v2/", headers=genuine)).status == 200
    assert (await client.get("/v2/", headers={"X-Forwarded-For": "10.9.0.1"})).status == 200


async def test_operator_check_reads_every_forwarded_for_line(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(
        fakehub,
        operator_cidrs=parse_networks("10.9.0.0/16"),
        trusted_proxies=parse_networks("127.0.0.0/8"),
    )
    forged = CIMultiDict([("X-Forwarded-For", "10.9.0.1"), ("X-Forwarded-For", "192.0.2.7")])
    for path in ("/status", "/metrics", "/"):
        assert (await client.get(path, headers=forged)).status == 403, path
        genuine = CIMultiDict([("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-For", "10.9.0.1")])
        assert (await client.get(path, headers=genuine)).status == 200, path


async def test_operator_endpoints_need_an_operator_network_or_a_login(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(
        fakehub,
        operator_cidrs=parse_networks("10.9.0.0/16"),
        trusted_proxies=parse_networks("127.0.0.0/8"),
        auth_tokens=frozenset({"tok"}),
        anonymous_cidrs=parse_networks("0.0.0.0/0"),
    )
    for path in ("/metrics", "/status"):
        denied = await client.get(path, headers={"X-Forwarded-For": "10.1.2.3"})
        assert denied.status == 403, path
        assert (await denied.json())["errors"][0]["code"] == "DENIED"
        operator = await client.get(path, headers={"X-Forwarded-For": "10.9.0.4"})
        assert operator.status == 200, path
        login = await client.get(
            path, headers={"X-Forwarded-For": "10.1.2.3", "Authorization": "Bearer tok"}
        )
        assert login.status == 200, path
    # the registry API and the health checks are not operator endpoints
    assert (await client.get("/v2/", headers={"X-Forwarded-For": "10.1.2.3"})).status == 200
    assert (await client.get("/healthz/local")).status == 200


async def test_operator_endpoints_are_open_without_operator_networks(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(fakehub)
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/status")).status == 200
