"""Fixtures for end-to-end tests with real programs.

Session-wide (started once, stopped at the end of the session):

* ``token_server_session``: Docker-Hub-like token server; user ``hubuser`` / ``hubtoken``,
  anonymous requests denied.
* ``upstream_session``: distribution with token auth, holding ``library/golang:oci`` (OCI
  index) and ``library/golang:v2s2`` (Docker manifest list) of one small 2-platform image.
* ``golang_images``: ``{"oci": PushedImage, "v2s2": PushedImage}`` as the upstream reports them.

Per test:

* ``token_server`` / ``upstream``: the session servers, started again after a test that stopped
  them, and with the token server's test controls reset.
* ``proxy``: a fresh proxy subprocess with its own empty cache, pointed at the upstream.
* ``proxy_factory``: makes more of them (each stopped at teardown).

On a failed test the teardown prints the tail of each proxy's log.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.binaries import require_binaries
from support.distribution import Distribution
from support.oci_image import ImageLayout, PushedImage, Skopeo, build_oci_layout, push_image
from support.proxy_process import ProxyProcess
from support.token_server import TokenServer

HUB_USER = "hubuser"
HUB_PASSWORD = "hubtoken"
IMAGE_REPOSITORY = "library/golang"
IMAGE_TAGS = ("oci", "v2s2")

ProxyFactory = Callable[..., ProxyProcess]

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture(scope="session")
def e2e_binaries() -> dict[str, str]:
    """Skip (or, with PROXY_TEST_REQUIRE_BINARIES=1, fail) without docker-registry/skopeo."""
    return require_binaries("docker-registry", "skopeo")


@pytest.fixture(scope="session")
def token_server_session(
    e2e_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token-server"), {HUB_USER: HUB_PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def upstream_session(
    e2e_binaries: dict[str, str],
    token_server_session: TokenServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Distribution]:
    registry = Distribution(
        tmp_path_factory.mktemp("upstream"),
        token_server_session,
        binary=e2e_binaries["docker-registry"],
    )
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def skopeo(e2e_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    return Skopeo(tmp_path_factory.mktemp("skopeo"), binary=e2e_binaries["skopeo"])


@pytest.fixture(scope="session")
def golang_layout(tmp_path_factory: pytest.TempPathFactory) -> ImageLayout:
    """The small 2-platform test image as an OCI layout (about 1.8 MB of blobs)."""
    return build_oci_layout(tmp_path_factory.mktemp("golang-layout"), tags=("latest",), seed=1)


@pytest.fixture(scope="session")
def golang_images(
    upstream_session: Distribution, skopeo: Skopeo, golang_layout: ImageLayout
) -> dict[str, PushedImage]:
    """The test image pushed upstream as ``library/golang:oci`` and ``library/golang:v2s2``."""
    images = {}
    for tag in IMAGE_TAGS:
        images[tag] = push_image(
            skopeo,
            golang_layout,
            upstream_session.host,
            IMAGE_REPOSITORY,
            tag,
            username=HUB_USER,
            password=HUB_PASSWORD,
            docker_v2s2=(tag == "v2s2"),
        )
    return images


@pytest.fixture
def token_server(token_server_session: TokenServer) -> Iterator[TokenServer]:
    server = token_server_session
    server.start()
    yield server
    server.fail_with(None)
    server.users = {HUB_USER: HUB_PASSWORD}
    server.allow_anonymous_pull = False
    server.start()


@pytest.fixture
def upstream(
    upstream_session: Distribution,
    token_server: TokenServer,
    golang_images: dict[str, PushedImage],
    request: pytest.FixtureRequest,
) -> Iterator[Distribution]:
    """The session upstream, running; restarted after the test if the test stopped it.

    On a failed test the teardown prints the upstream requests made during the test.
    """
    upstream_session.start()
    start = upstream_session.mark()
    yield upstream_session
    upstream_session.start()
    if _test_failed(request):
        upstream_session.sync()
        entries = upstream_session.access_log()[start:]
        print(f"\nupstream {upstream_session.url}: {len(entries)} requests during the test")
        for entry in entries[-100:]:
            print(f"  {entry.method} {entry.path} -> {entry.status} ({entry.size} bytes)")


@pytest.fixture
def proxy_factory(
    upstream: Distribution, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ProxyFactory]:
    made: list[ProxyProcess] = []

    def make(start: bool = True, **kwargs: Any) -> ProxyProcess:
        kwargs.setdefault("username", HUB_USER)
        kwargs.setdefault("password", HUB_PASSWORD)
        workdir = kwargs.pop("workdir", None) or tmp_path_factory.mktemp("proxy")
        upstream_url = kwargs.pop("upstream_url", upstream.url)
        proxy = ProxyProcess(Path(workdir), upstream_url, **kwargs)
        made.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield make
    failed = _test_failed(request)
    for proxy in made:
        proxy.stop()
        if failed:
            print(f"\nproxy on {proxy.url} exited with {proxy.returncode}")
            print(proxy.log_tail(80))


@pytest.fixture
def proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    """A fresh proxy with an empty cache, in front of the upstream."""
    return proxy_factory()


# -- images for the real-client tests (test_clients.py) ------------------------------------------

CLIENT_IMAGE_SEEDS = {"golang": 3, "static": 4}


@pytest.fixture(scope="session")
def client_images(
    upstream_session: Distribution,
    token_server_session: TokenServer,
    skopeo: Skopeo,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, PushedImage]:
    """Two small 2-platform images pushed upstream for docker/containerd/podman/buildah:

    * ``"golang"``: ``library/golang:1.22``, an OCI index whose base layer holds busybox
      (``/bin/busybox``, ``/bin/sh``, ``/bin/cat``, ...), so it runs and builds (``RUN``);
    * ``"static"``: ``chainguard/static:latest``, a Docker manifest list without a shell, the
      distroless-like final stage of a multi-stage build (and a non-``library/`` repository).

    Each image's config carries the label ``org.example.registry-proxy.test-seed`` with its
    seed from CLIENT_IMAGE_SEEDS.
    """
    require_binaries("busybox")
    token_server_session.start()
    upstream_session.start()
    specs = {
        "golang": ("library/golang", "1.22", True, False, 512 * 1024, (256 * 1024, 64 * 1024)),
        "static": ("chainguard/static", "latest", False, True, 128 * 1024, (32 * 1024,)),
    }
    images = {}
    for key, (repository, tag, busybox, v2s2, base_size, layer_sizes) in specs.items():
        layout = build_oci_layout(
            tmp_path_factory.mktemp(f"{key}-layout"),
            tags=(tag,),
            seed=CLIENT_IMAGE_SEEDS[key],
            base_layer_size=base_size,
            platform_layer_sizes=layer_sizes,
            include_busybox=busybox,
        )
        images[key] = push_image(
            skopeo,
            layout,
            upstream_session.host,
            repository,
            tag,
            username=HUB_USER,
            password=HUB_PASSWORD,
            docker_v2s2=v2s2,
        )
    return images
