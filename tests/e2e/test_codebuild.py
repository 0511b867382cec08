"""CodeBuild builds, reproduced on both Docker generations: the buildspec, verbatim, pulls
through the proxy, and its set-up step proves it or fails the build.

Each test runs docs/clients/codebuild-buildspec.yml phase by phase (support.codebuild) in a
build container whose dockerd was started the way CodeBuild's entry point starts it (no
mirror), on Docker 26 with buildx (CodeBuild standard:7.0's generation) and on the system's
Docker 20.10 with ``DOCKER_BUILDKIT=1``. The source directory holds docs/clients/ as users copy
it and a Dockerfile ``FROM alpine:3.12``. The proxy sits behind a TLS front with a private CA
(support.tls_front) on an address Docker treats as secure, as it sits behind the ALB; the
build's only route leads to the front, and its HTTP(S) proxy variables point at a closed port,
so a pull that bypassed the mirror fails instead of reaching Docker Hub.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.binaries import require_binaries
from support.build_network import BuildNetwork
from support.codebuild import BuildHost
from support.distribution import Distribution
from support.docker_installs import DockerInstall, system_docker, trixie_docker
from support.oci_image import ImageLayout, PushedImage, Skopeo, build_oci_layout, push_image
from support.proxy_process import ProxyProcess
from support.server_tls import ServerTls, make_server_tls
from support.tls_front import TlsFront

from .conftest import HUB_PASSWORD, HUB_USER
from .test_clients import require_root

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
MIRROR_HOST = "registry.build.example.com"
BUILDSPEC = "docs/clients/codebuild-buildspec.yml"
DOCKERFILE = 'FROM alpine:3.12\nLABEL org.example.built-by="registry-proxy codebuild test"\n'
PROGRAMS = ("dockerd", "docker", "containerd", "runc", "nsenter", "unshare", "ip", "jq", "curl")


@pytest.fixture(scope="module")
def alpine_layout(tmp_path_factory: pytest.TempPathFactory) -> ImageLayout:
    return build_oci_layout(
        tmp_path_factory.mktemp("alpine-layout"),
        tags=("3.12",),
        seed=12,
        base_layer_size=64 * 1024,
        platform_layer_sizes=(16 * 1024,),
    )


@pytest.fixture(scope="module")
def alpine(
    upstream_session: Distribution, skopeo: Skopeo, alpine_layout: ImageLayout
) -> PushedImage:
    """``library/alpine:3.12`` upstream: the Dockerfile's base."""
    upstream_session.start()
    return push_image(
        skopeo,
        alpine_layout,
        upstream_session.host,
        "library/alpine",
        "3.12",
        username=HUB_USER,
        password=HUB_PASSWORD,
    )


@pytest.fixture(scope="module", params=["26", "20.10"])
def docker_install(request: pytest.FixtureRequest) -> DockerInstall:
    require_binaries(*PROGRAMS)
    require_root()
    return trixie_docker() if request.param == "26" else system_docker()


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return make_server_tls(tmp_path_factory.mktemp("server-tls"), [MIRROR_HOST])


@pytest.fixture
def network() -> Iterator[BuildNetwork]:
    with BuildNetwork() as net:
        yield net


@pytest.fixture
def mirror(proxy_factory: Callable[..., ProxyProcess]) -> ProxyProcess:
    """The proxy, believing the front's X-Forwarded-For (the front connects from loopback)."""
    proxy: ProxyProcess = proxy_factory(extra_env={"PROXY_TRUSTED_PROXIES": "127.0.0.1/32"})
    return proxy


@pytest.fixture
def front(
    mirror: ProxyProcess, network: BuildNetwork, server_tls: ServerTls, tmp_path: Path
) -> Iterator[TlsFront]:
    with TlsFront(
        tmp_path / "front",
        f"{network.host_address}:443",
        mirror.host,
        server_tls.cert_file,
        server_tls.key_file,
    ) as tls_front:
        yield tls_front


@pytest.fixture
def build_host(
    docker_install: DockerInstall, network: BuildNetwork, tmp_path: Path
) -> Iterator[BuildHost]:
    host = BuildHost(
        tmp_path / "codebuild",
        docker_install,
        network,
        hosts={MIRROR_HOST: network.host_address},
        no_proxy=[MIRROR_HOST],
    )
    shutil.copytree(REPO / "docs" / "clients", host.source / "docs" / "clients")
    (host.source / "Dockerfile").write_text(DOCKERFILE)
    try:
        yield host
    finally:
        host.cleanup()


def test_buildspec_pulls_through_the_proxy(
    build_host: BuildHost,
    front: TlsFront,
    mirror: ProxyProcess,
    alpine: PushedImage,
    server_tls: ServerTls,
) -> None:
    result = build_host.run(
        build_host.source / BUILDSPEC, project_env={"MIRROR_CA_FILE": str(server_tls.ca_file)}
    )
    print(result)
    print(build_host.docker_log.read_text()[-3000:])
    print(front.log_text()[-3000:])
    print(mirror.log_tail(30))
    assert result.succeeded
