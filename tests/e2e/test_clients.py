"""The real clients pull through the proxy, configured with the files users get (docs/clients).

dockerd (``registry-mirrors`` from docs/clients/daemon.json), containerd's ``ctr`` (hosts.toml),
podman and buildah (registries.conf) run against the proxy on loopback, which fronts the
token-authenticated distribution upstream (see conftest.py).  skopeo is covered by
test_skopeo_pull.py.

A mirror that fails is hidden by the clients: dockerd and containerd retry at the real upstream
(registry-1.docker.io), podman/buildah at the ``docker.io`` location.  Here that fallback cannot
succeed and does not go unnoticed:

* the upstream these images live on is known only to the proxy and needs the proxy's
  credentials (the token server refuses anonymous requests);
* every client and daemon runs with ``HTTP(S)_PROXY`` set to a closed loopback port
  (support.clients.isolated_env), so any request to a registry other than the proxy fails at
  once, even on a machine with Internet access; ``test_docker_pull_fails_when_the_mirror_is_down``
  shows that a pull then fails instead of falling back;
* each test checks that the image it got has the upstream's digests and that the proxy's JSON
  log has the requests for its manifests and blobs.

One containerd and one dockerd serve the whole module (dockerd reads its mirrors at start, so
every test's fresh proxy listens on the same port); each test starts from an empty image store.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.binaries import binaries_required, require_binaries
from support.clients import (
    DEBIAN_DOCKER_CLI,
    ClosedPort,
    Containerd,
    ContainerTools,
    Dockerd,
    client_config_text,
    docker_daemon_config,
    docker_storage_driver,
    isolated_env,
    port_outside_ephemeral_range,
    registries_conf,
    render_for_proxy,
    write_containerd_hosts_dir,
)
from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution
from support.oci_image import PushedImage
from support.proxy_process import ProxyProcess
from support.token_server import TokenServer

e2e = pytest.mark.e2e  # all but the two checks of the documented files, which run anywhere

IMAGE_TAGS = ("oci", "v2s2")  # library/golang: OCI index / Docker manifest list (conftest)
PLATFORM = "linux/amd64"
SEED_LABEL = "org.example.registry-proxy.test-seed"
HUB_USER = "hubuser"

# dockerd 20.10 keeps the manifests it pulled in containerd's content store, also after
# `docker rmi` / `docker image prune`: a pull may fetch only the tag and the blobs.
DOCKERD_FETCHES_MANIFESTS = False

# What this machine needs besides the documented daemon.json (TESTBED.md): no iptables or
# bridge networking.  The mirror itself comes from docs/clients/daemon.json.
DOCKERD_TESTBED_SETTINGS: dict[str, Any] = {
    "iptables": False,
    "ip-forward": False,
    "ip-masq": False,
    "bridge": "none",
}

# The golang-builder + distroless shape: compile in the golang image, copy the result into an
# image without a shell.  busybox stands in for the static binary.
DOCKERFILE = """\
FROM {builder} AS build
WORKDIR /src
COPY message.txt .
RUN /bin/busybox mkdir -p /out \\
 && /bin/busybox cp /bin/busybox /out/busybox \\
 && /bin/busybox cat message.txt > /out/message.txt \\
 && echo "built on $(/bin/busybox uname -m)" >> /out/message.txt

FROM {final}
COPY --from=build /out/ /app/
ENTRYPOINT ["/app/busybox", "cat", "/app/message.txt"]
"""
MESSAGE = "hello from the build stage\n"
EXPECTED_OUTPUT = MESSAGE + "built on x86_64\n"


# ---------------------------------------------------------------------- helpers


def require_root() -> None:
    if os.geteuid() != 0:
        reason = "dockerd, containerd, podman and buildah need root here"
        if binaries_required():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def request_events(proxy: ProxyProcess, since: int = 0) -> list[dict[str, Any]]:
    """The proxy's access-log records ("request" events), from position ``since``."""
    return [r for r in proxy.json_logs() if r.get("event") == "request"][since:]


def assert_served(
    events: list[dict[str, Any]], image: PushedImage, *, manifests: bool = True
) -> None:
    """The proxy answered a pull of ``image`` (linux/amd64) with 200s: its tag, the platform
    manifest (unless ``manifests`` is false: a client that kept the manifests from an earlier
    pull only resolves the tag), the config and the layers."""
    ok = {(e["method"], e["path"]) for e in events if e["status"] == 200}
    base = f"/v2/{image.repository}"
    tag = f"{base}/manifests/{image.tag}"
    assert ("HEAD", tag) in ok or ("GET", tag) in ok, f"no 200 for the tag {tag}: {events}"
    manifest = image.platform(PLATFORM)
    if manifests:
        assert ("GET", f"{base}/manifests/{manifest.digest}") in ok, events
    missing = [
        digest
        for digest in (manifest.config_digest, *manifest.layer_digests)
        if ("GET", f"{base}/blobs/{digest}") not in ok
    ]
    assert missing == [], f"blobs of {image.reference} not pulled through the proxy: {missing}"


def assert_no_upstream_gets(upstream: Distribution, mark: int) -> None:
    upstream.sync()
    gets = upstream.entries("GET", BLOB_PATH, since=mark) + upstream.entries(
        "GET", MANIFEST_PATH, since=mark
    )
    assert gets == [], f"served from the cache, yet fetched upstream: {[e.raw for e in gets]}"


def assert_from_cache(events: list[dict[str, Any]], image: PushedImage) -> None:
    """A repeated pull: the tag and blobs served by the proxy, every blob a cache hit, no
    upstream request at all (the client may have kept the manifests)."""
    assert_served(events, image, manifests=False)
    blobs = [e for e in events if "/blobs/" in e["path"]]
    assert blobs and all(e["cache"] == "hit" for e in blobs), blobs
    assert sum(e["upstream_requests"] for e in events) == 0, events


def assert_only_the_proxy_authenticated(token_server: TokenServer, since: int) -> None:
    """Every token the upstream handed out during the test went to the proxy's account."""
    accounts = {r.account for r in token_server.requests()[since:]}
    assert accounts <= {HUB_USER}, f"token requests by others than the proxy: {accounts}"


def upstream_labels(upstream: Distribution, image: PushedImage) -> dict[str, str]:
    """The config labels of ``image`` (linux/amd64), read from the upstream directly."""
    digest = image.platform(PLATFORM).config_digest
    token = upstream.token(image.repository)
    status, _, body = upstream.request(
        "GET",
        f"/v2/{image.repository}/blobs/{digest}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 200, body
    labels: dict[str, str] = json.loads(body)["config"]["Labels"]
    return labels


def write_build_context(directory: Path, builder: str, final: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(DOCKERFILE.format(builder=builder, final=final))
    (directory / "message.txt").write_text(MESSAGE)
    return directory


def builder_image(source: str, proxy: ProxyProcess, image: PushedImage) -> str:
    """``golang:1.22`` (through the mirror) or ``127.0.0.1:PORT/library/golang:1.22``."""
    if source == "mirror":
        return f"{image.repository.removeprefix('library/')}:{image.tag}"
    return f"{proxy.host}/{image.repository}:{image.tag}"


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def closed_port() -> Iterator[ClosedPort]:
    with ClosedPort() as port:
        yield port


@pytest.fixture(scope="module")
def mirror_port() -> int:
    return port_outside_ephemeral_range()


@pytest.fixture
def mirror(proxy_factory: Callable[..., ProxyProcess], mirror_port: int) -> ProxyProcess:
    """This test's proxy (empty cache), on the port the module's dockerd knows."""
    proxy: ProxyProcess = proxy_factory(port=mirror_port)
    return proxy


@pytest.fixture(scope="module")
def containerd(
    tmp_path_factory: pytest.TempPathFactory, closed_port: ClosedPort
) -> Iterator[Containerd]:
    found = require_binaries("containerd", "ctr")
    require_root()
    daemon = Containerd(
        tmp_path_factory.mktemp("containerd"),
        isolated_env(closed_port),
        binary=found["containerd"],
        ctr_binary=found["ctr"],
    )
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def dockerd(
    containerd: Containerd,
    mirror_port: int,
    closed_port: ClosedPort,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dockerd]:
    found = require_binaries("dockerd", "docker")
    # the Debian CLI (20.10, BuildKit built in); a newer docker earlier in PATH wants buildx
    cli = str(DEBIAN_DOCKER_CLI) if DEBIAN_DOCKER_CLI.exists() else found["docker"]
    testbed = {**DOCKERD_TESTBED_SETTINGS, "storage-driver": docker_storage_driver()}
    config = docker_daemon_config(f"127.0.0.1:{mirror_port}", testbed)
    daemon = Dockerd(
        tmp_path_factory.mktemp("dockerd"),
        containerd,
        config,
        isolated_env(closed_port),
        binary=found["dockerd"],
        cli=cli,
    )
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def docker(dockerd: Dockerd, mirror: ProxyProcess) -> Dockerd:
    """The module's dockerd with an empty image store, its mirror (this test's proxy) up."""
    dockerd.reset()
    return dockerd


@pytest.fixture
def podman(
    mirror: ProxyProcess, closed_port: ClosedPort, tmp_path: Path
) -> Iterator[ContainerTools]:
    found = require_binaries("podman")
    require_root()
    tools = ContainerTools(
        tmp_path / "podman",
        registries_conf(mirror.host),
        isolated_env(closed_port),
        podman=found["podman"],
    )
    try:
        yield tools
    finally:
        tools.close()


@pytest.fixture
def buildah(
    mirror: ProxyProcess, closed_port: ClosedPort, tmp_path: Path
) -> Iterator[ContainerTools]:
    found = require_binaries("buildah")
    require_root()
    tools = ContainerTools(
        tmp_path / "buildah",
        registries_conf(mirror.host),
        isolated_env(closed_port),
        buildah=found["buildah"],
    )
    try:
        yield tools
    finally:
        tools.close()


# ---------------------------------------------------------------------- the documented files


def test_client_files_name_the_proxy_placeholder() -> None:
    """What the tests render is what users get: each file names the placeholder mirror."""
    daemon = json.loads(client_config_text("daemon.json"))
    assert daemon["registry-mirrors"] == ["https://registry.build.example.com"]

    hosts = tomllib.loads(client_config_text("containerd-hosts.toml"))
    assert hosts["host"]["https://registry.build.example.com"]["capabilities"] == [
        "pull",
        "resolve",
    ]

    conf = tomllib.loads(client_config_text("registries.conf"))
    assert conf["unqualified-search-registries"] == ["docker.io"]
    docker_io = next(r for r in conf["registry"] if r.get("prefix") == "docker.io")
    assert docker_io["mirror"] == [{"location": "registry.build.example.com", "insecure": False}]
    direct = next(r for r in conf["registry"] if r.get("location") == "registry.build.example.com")
    assert direct["insecure"] is False


def test_rendered_files_point_at_the_proxy() -> None:
    host = "127.0.0.1:5999"
    daemon = docker_daemon_config(host, {"iptables": False, "registry-mirrors": []})
    assert daemon["registry-mirrors"] == ["http://127.0.0.1:5999"]  # the file's keys win
    assert daemon["iptables"] is False
    hosts = tomllib.loads(render_for_proxy(client_config_text("containerd-hosts.toml"), host))
    assert list(hosts["host"]) == ["http://127.0.0.1:5999"]
    conf = tomllib.loads(registries_conf(host))
    mirrors = [m for r in conf["registry"] for m in r.get("mirror", [])]
    assert mirrors == [{"location": host, "insecure": True}]
    assert "registry.build.example.com" not in registries_conf(host)


# ---------------------------------------------------------------------- dockerd


@e2e
@pytest.mark.parametrize("tag", IMAGE_TAGS)
def test_docker_pull_goes_through_the_mirror_and_repeat_pull_is_cached(
    docker: Dockerd,
    mirror: ProxyProcess,
    upstream: Distribution,
    token_server: TokenServer,
    golang_images: dict[str, PushedImage],
    tag: str,
) -> None:
    image = golang_images[tag]
    tokens = len(token_server.requests())
    assert docker.info()["RegistryConfig"]["Mirrors"] == [f"{mirror.url}/"]

    docker.docker("pull", f"golang:{tag}")
    assert docker.docker(
        "image", "inspect", "--format", "{{json .RepoDigests}}", f"golang:{tag}"
    ).stdout.strip() == json.dumps([f"golang@{image.index_digest}"])
    first = request_events(mirror)
    assert_served(first, image, manifests=DOCKERD_FETCHES_MANIFESTS)
    assert any(e["upstream_requests"] > 0 for e in first), "a cold proxy asked no upstream"

    docker.docker("rmi", f"golang:{tag}")
    assert docker.docker("images", "--all", "--quiet").stdout.split() == []
    mark = upstream.mark()
    docker.docker("pull", f"golang:{tag}")
    assert_no_upstream_gets(upstream, mark)
    assert_from_cache(request_events(mirror, since=len(first)), image)
    assert_only_the_proxy_authenticated(token_server, tokens)


@e2e
def test_docker_run_pulls_through_the_mirror(
    docker: Dockerd, mirror: ProxyProcess, client_images: dict[str, PushedImage]
) -> None:
    image = client_images["golang"]
    result = docker.docker(
        "run", "--rm", "--network", "none", "golang:1.22", "/bin/busybox", "echo", "it runs"
    )
    assert result.stdout == "it runs\n"
    assert_served(request_events(mirror), image, manifests=DOCKERD_FETCHES_MANIFESTS)


@e2e
def test_docker_pull_fails_when_the_mirror_is_down(
    docker: Dockerd, mirror: ProxyProcess, golang_images: dict[str, PushedImage]
) -> None:
    """dockerd does fall back to registry-1.docker.io when its mirror fails; here the fallback
    is refused, so the pull fails instead of quietly bypassing the proxy."""
    mirror.stop()
    position = docker.log_position()
    result = docker.docker("pull", "golang:oci", check=False, timeout=60)
    assert result.returncode != 0, result.stdout
    assert docker.docker("images", "--all", "--quiet").stdout.split() == []
    # the error is the fallback's: registry-1.docker.io through the closed proxy port
    assert "registry-1.docker.io" in result.stderr, result.stderr
    assert "proxyconnect" in result.stderr, result.stderr
    # dockerd's log: the mirror failed, then the fallback to the real upstream failed
    attempts = [
        line
        for line in docker.log_since(position).splitlines()
        if "Attempting next endpoint" in line
    ]
    assert any(f"{mirror.url}/v2/" in line for line in attempts), attempts
    assert any("registry-1.docker.io" in line for line in attempts), attempts


@e2e
def test_docker_pull_fails_when_the_mirror_answers_with_errors(
    docker: Dockerd,
    mirror: ProxyProcess,
    upstream: Distribution,
    golang_images: dict[str, PushedImage],
) -> None:
    """A proxy that cannot reach its upstream answers with errors; dockerd then falls back,
    which fails here, and the proxy's log shows the failed request."""
    upstream.stop()  # restarted by the upstream fixture
    result = docker.docker("pull", "golang:oci", check=False, timeout=60)
    assert result.returncode != 0, result.stdout
    assert "proxyconnect" in result.stderr, result.stderr
    failed = [
        e
        for e in request_events(mirror)
        if e["path"] == "/v2/library/golang/manifests/oci" and e["status"] >= 500
    ]
    assert failed, request_events(mirror)


@e2e
@pytest.mark.parametrize("source", ["mirror", "proxy-host"])
@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_docker_build_multi_stage(
    docker: Dockerd,
    mirror: ProxyProcess,
    upstream: Distribution,
    client_images: dict[str, PushedImage],
    tmp_path: Path,
    builder: str,
    source: str,
) -> None:
    """``FROM golang AS build`` ... ``FROM <no-shell image>`` + ``COPY --from=build``, with the
    build stage named through the mirror (``golang:1.22``) or the proxy directly
    (``127.0.0.1:PORT/library/golang:1.22``)."""
    golang, static = client_images["golang"], client_images["static"]
    context = write_build_context(
        tmp_path / "context",
        builder=builder_image(source, mirror, golang),
        final=f"{static.repository}:{static.tag}",
    )
    env = {"DOCKER_BUILDKIT": "1" if builder == "buildkit" else "0"}
    docker.docker(
        "build", "--network", "none", "--tag", "app:test", str(context), env=env, timeout=180
    )
    result = docker.docker("run", "--rm", "--network", "none", "app:test")
    assert result.stdout == EXPECTED_OUTPUT

    events = request_events(mirror)
    assert_served(events, golang, manifests=DOCKERD_FETCHES_MANIFESTS)
    assert_served(events, static, manifests=DOCKERD_FETCHES_MANIFESTS)
    labels = docker.docker(
        "image", "inspect", "--format", "{{json .Config.Labels}}", "app:test"
    ).stdout
    assert json.loads(labels)[SEED_LABEL] == upstream_labels(upstream, static)[SEED_LABEL]
    assert (
        upstream_labels(upstream, golang)[SEED_LABEL]
        != upstream_labels(upstream, static)[SEED_LABEL]
    )


# ---------------------------------------------------------------------- containerd


@e2e
@pytest.mark.parametrize("tag", IMAGE_TAGS)
def test_ctr_pull_with_hosts_toml(
    containerd: Containerd,
    mirror: ProxyProcess,
    upstream: Distribution,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
    tag: str,
) -> None:
    image = golang_images[tag]
    hosts_dir = write_containerd_hosts_dir(tmp_path / "certs.d", mirror.host)
    namespace = f"rp-test-{secrets.token_hex(4)}"
    reference = f"docker.io/library/golang:{tag}"

    def pull() -> None:
        containerd.ctr(
            "images", "pull", "--hosts-dir", str(hosts_dir), reference, namespace=namespace
        )
        listing = containerd.ctr("images", "list", namespace=namespace).stdout.splitlines()
        rows = [line.split() for line in listing[1:]]
        assert [(row[0], row[2]) for row in rows] == [(reference, image.index_digest)]

    try:
        pull()
        first = request_events(mirror)
        assert_served(first, image)

        containerd.ctr("images", "remove", "--sync", reference, namespace=namespace)
        assert containerd.ctr("content", "list", "--quiet", namespace=namespace).stdout == ""
        mark = upstream.mark()
        pull()
        assert_no_upstream_gets(upstream, mark)
        assert_from_cache(request_events(mirror, since=len(first)), image)
    finally:
        containerd.ctr("images", "remove", "--sync", reference, namespace=namespace, check=False)
        containerd.ctr("namespaces", "remove", namespace, check=False)


# ---------------------------------------------------------------------- podman and buildah


@e2e
@pytest.mark.parametrize("name", ["docker.io/library/golang", "golang"], ids=["full", "short"])
@pytest.mark.parametrize("tag", IMAGE_TAGS)
def test_podman_pull_with_registries_conf(
    podman: ContainerTools,
    mirror: ProxyProcess,
    upstream: Distribution,
    golang_images: dict[str, PushedImage],
    tag: str,
    name: str,
) -> None:
    image = golang_images[tag]
    reference = f"{name}:{tag}"
    podman.pull(reference)
    assert f"docker.io/library/golang@{image.index_digest}" in podman.repo_digests(reference)
    first = request_events(mirror)
    assert_served(first, image)

    podman.podman("rmi", reference)
    mark = upstream.mark()
    podman.pull(reference)
    assert_no_upstream_gets(upstream, mark)
    assert_from_cache(request_events(mirror, since=len(first)), image)


@e2e
@pytest.mark.parametrize("source", ["mirror", "proxy-host"])
def test_buildah_bud_multi_stage(
    buildah: ContainerTools,
    mirror: ProxyProcess,
    upstream: Distribution,
    client_images: dict[str, PushedImage],
    tmp_path: Path,
    source: str,
) -> None:
    golang, static = client_images["golang"], client_images["static"]
    context = write_build_context(
        tmp_path / "context",
        builder=builder_image(source, mirror, golang),
        final=f"{static.repository}:{static.tag}",
    )
    buildah.bud(context, "localhost/app:test")
    assert buildah.read_file("localhost/app:test", "/app/message.txt").decode() == EXPECTED_OUTPUT

    events = request_events(mirror)
    assert_served(events, golang)
    assert_served(events, static)
    labels = buildah.labels("localhost/app:test")
    assert labels[SEED_LABEL] == upstream_labels(upstream, static)[SEED_LABEL]
