"""proxy/upstream/registry.py: which upstream a request names (a path prefix, ``ns=``, or Docker
Hub by default, with ``library/`` for official images), and refusals for hosts not configured
and names that get too long upstream. Through the app: tests/http/test_routes.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.config import DOCKER_HUB_HOST, UpstreamSettings
from proxy.registry.errors import ErrorCode, RegistryError
from proxy.registry.reference import NAME_MAX_LENGTH
from proxy.upstream.client import RegistryClient
from proxy.upstream.registry import Upstreams


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    async with aiohttp.ClientSession() as session:  # never used: nothing is asked upstream

        def client(host: str) -> RegistryClient:
            return RegistryClient(UpstreamSettings(host, f"https://{host}"), session)

        yield Upstreams(client(DOCKER_HUB_HOST), {"ghcr.io": client("ghcr.io")})


@pytest.mark.parametrize(
    ("name", "ns", "host", "upstream_name"),
    [
        ("golang", None, "docker.io", "library/golang"),
        ("library/golang", None, "docker.io", "library/golang"),
        ("bitnami/redis", None, "docker.io", "bitnami/redis"),
        ("docker.io/golang", None, "docker.io", "library/golang"),
        ("registry-1.docker.io/bitnami/redis", None, "docker.io", "bitnami/redis"),
        ("golang", "docker.io", "docker.io", "library/golang"),
        ("ghcr.io/owner/app", None, "ghcr.io", "owner/app"),
        ("owner/app", "ghcr.io", "ghcr.io", "owner/app"),
        ("owner/app", "GHCR.IO", "ghcr.io", "owner/app"),
        ("app", "ghcr.io", "ghcr.io", "app"),  # library/ is Docker Hub's alone
    ],
)
async def test_a_request_goes_to_the_upstream_it_names(
    upstreams: Upstreams, name: str, ns: str | None, host: str, upstream_name: str
) -> None:
    client, resolved = upstreams.resolve(name, ns)
    assert (client.host, resolved) == (host, upstream_name)


async def test_a_host_not_configured_is_refused(upstreams: Upstreams) -> None:
    for name, ns in (("quay.io/owner/app", None), ("owner/app", "quay.io")):
        with pytest.raises(RegistryError) as refused:
            upstreams.resolve(name, ns)
        assert refused.value.code is ErrorCode.DENIED
        assert "quay.io is not configured" in str(refused.value)


async def test_a_name_too_long_once_library_is_added_is_refused(upstreams: Upstreams) -> None:
    longest = "a" * (NAME_MAX_LENGTH - len("library/"))
    assert upstreams.resolve(longest, None)[1] == f"library/{longest}"
    with pytest.raises(RegistryError) as refused:
        upstreams.resolve(longest + "a", None)
    assert refused.value.code is ErrorCode.NAME_INVALID
