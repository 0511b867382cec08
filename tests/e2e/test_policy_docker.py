"""What a repository refusal looks like to ``docker pull`` (dockerd 20.10), as the README says.

* ``docker pull PROXY/library/ubuntu:x`` (the proxy as a registry name): the pull fails with the
  proxy's message, which names the rule: ``denied: repository library/ubuntu is refused by this
  proxy: it matches PROXY_DENY_REPOSITORIES pattern library/ubuntu``.
* ``docker pull ubuntu:x`` through ``registry-mirrors``: dockerd takes any error from a mirror
  as a reason to try the next endpoint, Docker Hub itself. Here that fallback is refused (the
  daemon's HTTP proxy is a closed port, see test_clients.py), so the pull fails with the
  fallback's error; dockerd's log keeps the proxy's answer. In production the fallback pulls
  from Docker Hub directly unless the network forbids it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.clients import Dockerd
from support.proxy_process import ProxyProcess

# The dockerd/containerd fixtures of the real-client tests (one of each for this module).
from .test_clients import closed_port, containerd, dockerd, mirror_port  # noqa: F401

pytestmark = pytest.mark.e2e

RULES = {
    "PROXY_ALLOW_REPOSITORIES": "library/*",
    "PROXY_DENY_REPOSITORIES": "library/ubuntu",
}


@pytest.fixture
def refusing_proxy(
    proxy_factory: Callable[..., ProxyProcess],
    mirror_port: int,  # noqa: F811
) -> ProxyProcess:
    return proxy_factory(port=mirror_port, extra_env=RULES)


@pytest.fixture
def docker(dockerd: Dockerd, refusing_proxy: ProxyProcess) -> Dockerd:  # noqa: F811
    dockerd.reset()
    return dockerd


def test_refused_by_registry_name_shows_the_rule(
    docker: Dockerd, refusing_proxy: ProxyProcess
) -> None:
    denied = docker.docker(
        "pull", f"{refusing_proxy.host}/library/ubuntu:22.04", check=False, timeout=60
    )
    assert denied.returncode != 0
    assert (
        "denied: repository library/ubuntu is refused by this proxy: "
        "it matches PROXY_DENY_REPOSITORIES pattern library/ubuntu"
    ) in denied.stderr, denied.stderr

    unmatched = docker.docker(
        "pull", f"{refusing_proxy.host}/bitnami/redis:7", check=False, timeout=60
    )
    assert unmatched.returncode != 0
    assert (
        "denied: repository bitnami/redis is refused by this proxy: "
        "it matches no pattern of PROXY_ALLOW_REPOSITORIES (library/*)"
    ) in unmatched.stderr, unmatched.stderr
    assert docker.docker("images", "--all", "--quiet").stdout.split() == []


def test_refused_through_the_mirror_makes_dockerd_try_docker_hub(
    docker: Dockerd, refusing_proxy: ProxyProcess
) -> None:
    position = docker.log_position()
    result = docker.docker("pull", "ubuntu:22.04", check=False, timeout=60)
    assert result.returncode != 0
    # The error shown is the fallback's (Docker Hub, unreachable here), not the proxy's.
    assert "registry-1.docker.io" in result.stderr, result.stderr
    log = docker.log_since(position)
    assert "repository library/ubuntu is refused by this proxy" in log, log
    refused = [line for line in refusing_proxy.log_tail(50).splitlines() if '"status": 403' in line]
    assert refused, refusing_proxy.log_tail(50)
