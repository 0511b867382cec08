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

Outside a VPC, the buildspec is the one docs/codebuild.md (section 3.4) has the reader make: the
mirror set to the guide's InternetMirrorUrl, the secrets-manager block uncommented as the guide
gives it, resolved from a stand-in for Secrets Manager holding what `registry-proxy certs issue`
wrote under the guide's secret name; the front then verifies client certificates as the ALB's
verify mode does. The set-up's failures are the ones the guide's troubleshooting quotes.
(MIRROR_CA_FILE, a project variable here, is only for the front's private CA: the ALB's ACM
certificate needs none.)
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import markdown
from support.binaries import require_binaries
from support.build_network import BuildNetwork
from support.codebuild import GUIDE, BuildHost, BuildResult, script_error, troubleshooting
from support.distribution import Distribution
from support.docker_installs import DockerInstall, system_docker, trixie_docker
from support.oci_image import ImageLayout, PushedImage, Skopeo, build_oci_layout, push_image
from support.proxy_process import ProxyProcess
from support.server_tls import ServerTls, make_server_tls
from support.tls_front import TlsFront

from proxy.commands.cli import main

from .conftest import HUB_PASSWORD, HUB_USER
from .test_clients import assert_served, request_events, require_root

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
MIRROR_HOST = "registry.build.example.com"
MIRROR_URL = f"https://{MIRROR_HOST}"
BUILDSPEC = "docs/clients/codebuild-buildspec.yml"
# docs/codebuild.md's section on the buildspec of a build outside any VPC
GUIDE_BUILDSPEC = "3.4 The project and its buildspec"
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


def guide_mirror_url() -> str:
    """The REGISTRY_MIRROR the guide has the reader set outside a VPC (InternetMirrorUrl)."""
    text = markdown.section(GUIDE.read_text(), GUIDE_BUILDSPEC)
    values: list[str] = re.findall(r"`REGISTRY_MIRROR: (https://[^`]+)`", text)
    (value,) = values
    return value


INTERNET_URL = guide_mirror_url()
INTERNET_HOST = INTERNET_URL.removeprefix("https://")


def guide_secrets() -> dict[str, str]:
    """The guide's secrets-manager block: variable -> secret-id:json-key."""
    (block,) = markdown.code_blocks(markdown.section(GUIDE.read_text(), GUIDE_BUILDSPEC), "yaml")
    secrets: dict[str, str] = yaml.safe_load(block)["secrets-manager"]
    return secrets


def guide_buildspec(source: Path, *, with_secrets: bool) -> Path:
    """The buildspec as the guide has the reader make it outside a VPC: the shipped one copied
    as buildspec.yml, REGISTRY_MIRROR set to the guide's InternetMirrorUrl, and (unless the
    reader forgot) the secrets-manager block uncommented, which must then be the guide's."""
    text = (source / BUILDSPEC).read_text()
    shipped = "    REGISTRY_MIRROR: https://registry.build.example.com\n"
    assert text.count(shipped) == 1, text
    text = text.replace(shipped, f"    REGISTRY_MIRROR: {INTERNET_URL}\n")
    if with_secrets:
        lines = text.splitlines(keepends=True)
        start = end = lines.index("  # secrets-manager:\n")
        while lines[end + 1].startswith("  #   "):
            end += 1
        lines[start : end + 1] = [line.replace("# ", "", 1) for line in lines[start : end + 1]]
        text = "".join(lines)
        assert yaml.safe_load(text)["env"]["secrets-manager"] == guide_secrets()
    path = source / "buildspec.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return make_server_tls(tmp_path_factory.mktemp("server-tls"), [MIRROR_HOST, INTERNET_HOST])


@pytest.fixture
def network() -> Iterator[BuildNetwork]:
    with BuildNetwork() as net:
        yield net


@pytest.fixture
def mirror(proxy_factory: Callable[..., ProxyProcess], network: BuildNetwork) -> ProxyProcess:
    """The proxy, admitting the build container's address only, as the front forwards it
    (X-Forwarded-For, believed from the front on loopback): every request it answered came
    through the front, from the build."""
    proxy: ProxyProcess = proxy_factory(
        extra_env={
            "PROXY_TRUSTED_PROXIES": "127.0.0.1/32",
            "PROXY_ALLOW_CIDRS": f"{network.build_address}/32",
        }
    )
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
        hosts={MIRROR_HOST: network.host_address, INTERNET_HOST: network.host_address},
        no_proxy=[MIRROR_HOST, INTERNET_HOST],
    )
    shutil.copytree(REPO / "docs" / "clients", host.source / "docs" / "clients")
    (host.source / "Dockerfile").write_text(DOCKERFILE)
    try:
        yield host
    finally:
        host.cleanup()


# ---------------------------------------------------------------------- what the proxy saw


def requests_for(proxy: ProxyProcess, repository: str) -> list[dict[str, Any]]:
    return [e for e in request_events(proxy) if e.get("repository") == repository]


def assert_pulled_through_proxy(proxy: ProxyProcess, image: PushedImage) -> None:
    """The proxy's own record: ``image``'s tag, its linux/amd64 manifest, config and layers,
    answered 200 (to the build container: the proxy admits no other address)."""
    assert_served(requests_for(proxy, image.repository), image)


def phase_output(result: BuildResult, phase: str) -> str:
    """What the commands of ``phase`` printed."""
    end = result.output.index(f"::phase {phase} exit=")
    start = result.output.rfind("::phase ", 0, end)
    return result.output[max(start, 0) : end]


def handshakes(front: TlsFront, peer: str) -> list[dict[str, Any]]:
    return [dict(e) for e in front.events("handshake") if e["peer"] == peer]


# ---------------------------------------------------------------------- the internal set-up


def test_buildspec_builds_and_pulls_through_the_proxy(
    build_host: BuildHost,
    docker_install: DockerInstall,
    front: TlsFront,
    mirror: ProxyProcess,
    upstream: Distribution,
    alpine: PushedImage,
    golang_images: dict[str, PushedImage],
    server_tls: ServerTls,
    network: BuildNetwork,
) -> None:
    """The documented buildspec, verbatim: the set-up proves itself, the BuildKit build's base
    and a plain docker pull afterwards come through the proxy, and nothing fell back."""
    golang = golang_images["v2s2"]
    mark = upstream.mark()
    result = build_host.run(
        build_host.source / BUILDSPEC,
        project_env={"MIRROR_CA_FILE": str(server_tls.ca_file)},
        after=["docker pull golang:v2s2"],
    )
    assert result.succeeded, result
    assert result.phases == {"pre_build": 0, "build": 0}, result
    assert result.after == [0], result
    assert f"::dockerd {docker_install.name}." in result.output, result
    setup = phase_output(result, "pre_build")
    for line in ("docker pull goes through", "BuildKit builds go through"):
        assert f"use-registry-mirror: {line} {MIRROR_URL}" in setup, result

    # the build ran on BuildKit (buildx's default on 26, DOCKER_BUILDKIT=1 on 20.10)
    build = phase_output(result, "build")
    assert "[internal] load build definition from Dockerfile" in build, build
    assert "Step 1/" not in build, "the classic builder ran, not BuildKit"
    if docker_install.name == "26":  # buildx, with the default builder (dockerd's BuildKit)
        assert 'building with "default" instance using docker driver' in build, build
    assert_pulled_through_proxy(mirror, alpine)
    assert_pulled_through_proxy(mirror, golang)

    # the probe: answered by the proxy itself, never counted, cached or asked upstream
    probes = requests_for(mirror, "registry-proxy/probe")
    assert probes and all(e["status"] == 200 for e in probes), probes
    assert all(e["cache"] == "-" and e["upstream_requests"] == 0 for e in probes), probes
    upstream.sync()
    assert not [e for e in upstream.access_log()[mark:] if "registry-proxy" in e.path]

    # dockerd never tried another endpoint (a fallback to Docker Hub would have been logged)
    assert "Attempting next endpoint" not in build_host.docker_log.read_text()
    assert build_host.daemon_config()["registry-mirrors"] == [MIRROR_URL]
    assert (build_host.certs_d / MIRROR_HOST / "ca.crt").read_bytes() == (
        server_tls.ca_file.read_bytes()
    )


def test_setup_fails_the_build_when_dockerd_does_not_use_the_mirror(
    build_host: BuildHost, front: TlsFront, mirror: ProxyProcess, server_tls: ServerTls
) -> None:
    """dockerd that cannot reach the mirror (its own proxy settings leave it out) while the
    build's shell can: `/v2/` answers, `docker info` lists the mirror, and the probe still
    fails the build before its first pull from Docker Hub."""
    result = build_host.run(
        build_host.source / BUILDSPEC,
        project_env={"MIRROR_CA_FILE": str(server_tls.ca_file)},
        dockerd_env={"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
    )
    assert not result.succeeded, result
    assert result.phases == {"pre_build": 1}, result  # the build phase never ran
    setup = phase_output(result, "pre_build")
    assert "dockerd lists https://registry.build.example.com" in setup, result
    assert "error: dockerd did not pull registry-proxy/probe:pull-" in setup, result
    assert "Docker Hub pulls would bypass the proxy" in setup, result
    assert "dockerd's own proxy settings" in troubleshooting(script_error(setup))
    # the probe's HEAD through curl reached the proxy; dockerd's pull never did
    probes = requests_for(mirror, "registry-proxy/probe")
    assert [(e["method"], e["path"].rsplit("/", 1)[0]) for e in probes] == [
        ("HEAD", "/v2/registry-proxy/probe/manifests")
    ], probes


def test_sighup_is_enough_on_26_but_dockerd_20_10_buildkit_keeps_docker_hub(
    build_host: BuildHost,
    docker_install: DockerInstall,
    front: TlsFront,
    mirror: ProxyProcess,
    alpine: PushedImage,
    server_tls: ServerTls,
) -> None:
    """Why the script restarts dockerd: with only a SIGHUP (MIRROR_RELOAD=hup), `docker pull`
    follows the new mirror on both generations, BuildKit only on 26; on 20.10 the probe's
    BuildKit build fails the set-up instead of letting the build go to Docker Hub."""
    result = build_host.run(
        build_host.source / BUILDSPEC,
        project_env={"MIRROR_CA_FILE": str(server_tls.ca_file), "MIRROR_RELOAD": "hup"},
    )
    setup = phase_output(result, "pre_build")
    assert f"docker pull goes through {MIRROR_URL}" in setup, result
    if docker_install.name == "26":
        assert result.succeeded, result
        assert f"BuildKit builds go through {MIRROR_URL}" in setup, result
        return
    assert result.phases == {"pre_build": 1}, result
    assert "error: BuildKit did not resolve registry-proxy/probe:build-" in setup, result
    assert "MIRROR_RELOAD=hup" in troubleshooting(script_error(setup))
    assert "registry-1.docker.io" in setup, result  # where dockerd 20.10's BuildKit went
    assert requests_for(mirror, "library/alpine") == []


# ---------------------------------------------------------------------- mutual TLS (outside a VPC)


@pytest.fixture(scope="module")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made with `registry-proxy certs init-ca`; returns its published directory."""
    root = tmp_path_factory.mktemp("client-ca")
    assert (
        main(
            ["certs", "init-ca", "--dir", str(root / "private"), "--publish", str(root / "public")]
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def client_certificate(client_ca: Path) -> dict[str, str]:
    out = client_ca / "build.json"
    assert (
        main(
            ["certs", "issue", "--dir", str(client_ca / "private"), "my-service", "--out", str(out)]
        )
        == 0
    )
    document: dict[str, str] = json.loads(out.read_text())
    return document


@pytest.fixture
def mtls_front(
    mirror: ProxyProcess,
    network: BuildNetwork,
    server_tls: ServerTls,
    client_ca: Path,
    tmp_path: Path,
) -> Iterator[TlsFront]:
    """The front in verify mode, as the internet-facing ALB: the trust store holds the CA
    bundle and the revocation list the stack is given (`certs` publishes both)."""
    with TlsFront(
        tmp_path / "mtls-front",
        f"{network.host_address}:443",
        mirror.host,
        server_tls.cert_file,
        server_tls.key_file,
        client_ca=client_ca / "public" / "ca.pem",
        crl=client_ca / "public" / "crl.pem",
    ) as tls_front:
        yield tls_front


def test_mutual_tls_builds_with_the_client_certificate(
    build_host: BuildHost,
    mtls_front: TlsFront,
    mirror: ProxyProcess,
    alpine: PushedImage,
    golang_images: dict[str, PushedImage],
    server_tls: ServerTls,
    client_certificate: dict[str, str],
    network: BuildNetwork,
) -> None:
    """The buildspec as the guide has it made, its certificate from the secret the guide names
    (holding what `certs issue` wrote): every connection of the build presents it."""
    (secret_id,) = {reference.split(":")[0] for reference in guide_secrets().values()}
    result = build_host.run(
        guide_buildspec(build_host.source, with_secrets=True),
        project_env={"MIRROR_CA_FILE": str(server_tls.ca_file)},
        secrets={secret_id: json.dumps(client_certificate)},
        after=["docker pull golang:v2s2"],
    )
    assert result.succeeded, result
    assert result.after == [0], result
    setup = phase_output(result, "pre_build")
    for line in ("client certificate installed", "docker pull goes through", "BuildKit builds"):
        assert f"use-registry-mirror: {line}" in setup, result  # what the guide says to look for
    assert build_host.daemon_config()["registry-mirrors"] == [INTERNET_URL]
    assert_pulled_through_proxy(mirror, alpine)
    assert_pulled_through_proxy(mirror, golang_images["v2s2"])
    seen = handshakes(mtls_front, network.build_address)
    assert seen and all(e["ok"] for e in seen), seen
    serials = {int(str(e["client_serial"]), 16) for e in seen}
    assert serials == {int(client_certificate["serial"], 16)}, seen

    installed = build_host.certs_d / INTERNET_HOST
    assert (installed / "client.cert").read_text().strip() == client_certificate[
        "certificate"
    ].strip()
    assert stat.S_IMODE((installed / "client.key").stat().st_mode) == 0o600
    # buildx builders of the docker-container driver get the same mirror and files
    buildkitd = build_host.workdir / "home" / ".docker" / "buildx" / "buildkitd.default.toml"
    config = tomllib.loads(buildkitd.read_text())
    assert config["registry"]["docker.io"]["mirrors"] == [INTERNET_HOST]
    assert config["registry"][INTERNET_HOST]["keypair"] == [
        {
            "key": f"/etc/docker/certs.d/{INTERNET_HOST}/client.key",
            "cert": f"/etc/docker/certs.d/{INTERNET_HOST}/client.cert",
        }
    ]
    assert config["registry"][INTERNET_HOST]["ca"] == [
        f"/etc/docker/certs.d/{INTERNET_HOST}/ca.crt"
    ]


def test_mutual_tls_without_the_certificate_fails_the_setup(
    build_host: BuildHost,
    mtls_front: TlsFront,
    mirror: ProxyProcess,
    server_tls: ServerTls,
    network: BuildNetwork,
) -> None:
    """The reader set the mirror but left the secrets-manager block commented out: the set-up
    fails the build, with the message the guide's troubleshooting explains."""
    result = build_host.run(
        guide_buildspec(build_host.source, with_secrets=False),
        project_env={"MIRROR_CA_FILE": str(server_tls.ca_file)},
    )
    assert result.phases == {"pre_build": 1}, result
    setup = phase_output(result, "pre_build")
    assert f"error: cannot reach {INTERNET_URL}" in setup, result
    assert "no client certificate" in troubleshooting(script_error(setup)), setup
    refused = handshakes(mtls_front, network.build_address)
    assert refused and not any(e["ok"] for e in refused), refused
    assert [e for e in request_events(mirror) if e["path"].startswith("/v2/")] == []


def test_mutual_tls_refuses_dockerd_and_buildkit_without_the_certificate(
    build_host: BuildHost,
    mtls_front: TlsFront,
    mirror: ProxyProcess,
    alpine: PushedImage,
    server_tls: ServerTls,
    network: BuildNetwork,
) -> None:
    """With MIRROR_CHECK=warn the set-up only warns; then the BuildKit build and a docker pull
    are refused by the front, and their fallback to Docker Hub fails: nothing reaches the
    proxy without the certificate."""
    result = build_host.run(
        guide_buildspec(build_host.source, with_secrets=False),
        project_env={"MIRROR_CA_FILE": str(server_tls.ca_file), "MIRROR_CHECK": "warn"},
        after=["docker pull golang:v2s2"],
    )
    assert result.phases == {"pre_build": 0, "build": 1}, result
    assert "warning: cannot reach" in phase_output(result, "pre_build"), result
    # BuildKit 26 stops at the refused mirror; 20.10's tries Docker Hub next, which fails here
    build = phase_output(result, "build")
    assert f"{INTERNET_HOST}/v2/library/alpine" in build or "registry-1.docker.io" in build, build
    assert result.after == [1], result
    refused = handshakes(mtls_front, network.build_address)
    assert len(refused) >= 3 and not any(e["ok"] for e in refused), refused
    assert [e for e in request_events(mirror) if e["path"].startswith("/v2/")] == []
