"""The arrangement every side-by-side figure is measured in, all on 127.0.0.1.

* The upstream, standing in for Docker Hub: CNCF distribution (``docker-registry``) with token
  auth from :class:`support.token_server.TokenServer` (anonymous pulls allowed, as for public
  images on Docker Hub; the proxies use an account, as they would in production).  Its access
  log counts what everyone asked of it and how many bytes it sent.
* The WAN between the upstream and everyone else: :class:`.relay.RelayProcess` (40 ms round
  trip, 25 MB/s per connection).  The proxies and the direct pulls all go through it.
* The servers compared: registry-proxy (``registry-proxy serve``, a subprocess), distribution in
  proxy mode (``docker-registry`` with ``proxy.remoteurl``) on the same storage type, and
  :class:`.bare_server.BareServer` for the warm figures (no upstream at all).

The image: one linux/amd64 image built with :func:`support.oci_image.build_oci_layout` from seeded
random bytes (a config and six gzip layers, 212 MB; the biggest layer 105 MB), pushed as an OCI
index under ``library/golang:bench``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution
from support.oci_image import AMD64, PushedImage, Skopeo, build_oci_layout, push_image
from support.proxy_process import ProxyProcess
from support.token_server import TokenServer

from .bare_server import BareServer
from .relay import RelayProcess

MiB = 1024 * 1024
HUB_USER = "hubuser"
HUB_PASSWORD = "hubtoken"
REPOSITORY = "library/golang"
TAG = "bench"


S = TypeVar("S")
PORT_ATTEMPTS = 3


def on_a_free_port(start: Callable[[], S]) -> S:
    """Run ``start`` (which picks a free port and starts a server on it) again when another
    process took the port in between: the machine is shared with other test runs."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            return start()
        except RuntimeError as exc:
            if "address already in use" not in str(exc).lower() or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class Server(Protocol):
    """What the harness needs of every process it measures."""

    @property
    def url(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def stop(self) -> Any: ...


@dataclass(frozen=True)
class ImageShape:
    """Sizes of the random payloads of the image's layers (gzip leaves random bytes as big)."""

    base_layer: int
    other_layers: tuple[int, ...]


# Shaped like a golang image: two big layers, a few small ones.  About 212 MB.
FULL_IMAGE = ImageShape(100 * MiB, (87 * MiB, 8 * MiB, 4 * MiB, 2 * MiB, 3 * MiB // 2))
QUICK_IMAGE = ImageShape(12 * MiB, (8 * MiB, 2 * MiB, 1 * MiB))


@dataclass(frozen=True)
class BenchImage:
    pushed: PushedImage
    size: int  # bytes of the config and layers: what a pull moves
    manifest_digest: str  # the linux/amd64 image manifest (what dockerd GETs by digest)
    biggest_blob: str
    biggest_size: int
    content: Path  # a skopeo dir: copy, served by the bare server

    @property
    def tag_path(self) -> str:
        return f"/v2/{REPOSITORY}/manifests/{TAG}"

    @property
    def digest_path(self) -> str:
        return f"/v2/{REPOSITORY}/manifests/{self.manifest_digest}"

    @property
    def blob_path(self) -> str:
        return f"/v2/{REPOSITORY}/blobs/{self.biggest_blob}"


@dataclass(frozen=True)
class Traffic:
    """What the upstream served between a mark and now."""

    bytes: int
    manifest_gets: int
    manifest_heads: int
    blob_gets: int
    blob_heads: int


class Upstream:
    """Token server, distribution with the image, and the relay in front of it.

    Use as a context manager: everything started is stopped on the way out, also on Ctrl-C.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tokens = TokenServer(
            workdir / "token", {HUB_USER: HUB_PASSWORD}, allow_anonymous_pull=True
        )
        self.registry: Distribution | None = None
        self.relay: RelayProcess | None = None

    def __enter__(self) -> Upstream:
        try:
            self.tokens.start()
            self.registry = on_a_free_port(self._start_registry)
            self.relay = on_a_free_port(self._start_relay)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_registry(self) -> Distribution:
        registry = Distribution(self.workdir / "upstream", self.tokens)
        registry.start()
        return registry

    def _start_relay(self) -> RelayProcess:
        assert self.registry is not None
        relay = RelayProcess(self.workdir / "relay", self.registry.port)
        relay.start()
        return relay

    def __exit__(self, *exc: object) -> None:
        if self.relay is not None:
            self.relay.stop()
        if self.registry is not None:
            self.registry.stop()
        self.tokens.stop()

    @property
    def near(self) -> Distribution:
        """The upstream registry itself, without the WAN (to fill caches quickly)."""
        assert self.registry is not None
        return self.registry

    @property
    def far_url(self) -> str:
        """The upstream as seen across the WAN (through the relay)."""
        assert self.relay is not None
        return self.relay.url

    @property
    def far_host(self) -> str:
        assert self.relay is not None
        return self.relay.host

    def push(self, shape: ImageShape, skopeo: Skopeo) -> BenchImage:
        """Build the image, push it, and keep a dir: copy of it for the bare server."""
        layout = build_oci_layout(
            self.workdir / "layout",
            tags=("latest",),
            seed=212,
            base_layer_size=shape.base_layer,
            platform_layer_sizes=shape.other_layers,
            platforms=(AMD64,),
        )
        pushed = push_image(
            skopeo,
            layout,
            self.near.host,
            REPOSITORY,
            TAG,
            username=HUB_USER,
            password=HUB_PASSWORD,
        )
        shutil.rmtree(layout.path)
        content = self.workdir / "content"
        skopeo.pull_to_dir(f"{self.near.host}/{REPOSITORY}:{TAG}", content)
        (image,) = layout.images
        biggest = max(image.layers, key=lambda layer: layer.size)
        return BenchImage(
            pushed=pushed,
            size=layout.total_size,
            manifest_digest=pushed.platform(str(AMD64)).digest,
            biggest_blob=biggest.digest,
            biggest_size=biggest.size,
            content=content,
        )

    def mark(self) -> int:
        return self.near.mark()

    def traffic(self, since: int) -> Traffic:
        registry = self.near
        registry.sync()
        entries = registry.entries(since=since)
        return Traffic(
            bytes=sum(e.size for e in entries if e.method == "GET"),
            manifest_gets=registry.count("GET", MANIFEST_PATH, since=since),
            manifest_heads=registry.count("HEAD", MANIFEST_PATH, since=since),
            blob_gets=registry.count("GET", BLOB_PATH, since=since),
            blob_heads=registry.count("HEAD", BLOB_PATH, since=since),
        )


def start_ours(
    workdir: Path,
    upstream_url: str,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ProxyProcess:
    """registry-proxy with its defaults, an empty cache in ``workdir`` and the hub account."""

    def start() -> ProxyProcess:
        proxy = ProxyProcess(
            workdir,
            upstream_url,
            username=HUB_USER,
            password=HUB_PASSWORD,
            port=port,
            extra_env=env,
        )
        proxy.start()
        return proxy

    return on_a_free_port(start)


def start_distribution(
    workdir: Path,
    upstream_url: str,
    *,
    port: int | None = None,
    storage: Mapping[str, Any] | None = None,
) -> Distribution:
    """distribution in proxy mode with the hub account; filesystem storage unless ``storage``
    (a distribution ``storage:`` section) says otherwise."""
    extra: dict[str, Any] = {
        "proxy": {"remoteurl": upstream_url, "username": HUB_USER, "password": HUB_PASSWORD}
    }
    if storage is not None:
        extra["storage"] = dict(storage)

    def start() -> Distribution:
        registry = Distribution(workdir, None, port=port, extra_config=extra)
        registry.start()
        return registry

    return on_a_free_port(start)


def moto_unavailable() -> str | None:
    """Why S3 figures cannot be measured here (no ``moto_server``), or None."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists() or shutil.which("moto_server"):
        return None
    return "moto_server not found: pip install -e '.[test]'"


def start_bare(workdir: Path, image: BenchImage) -> BareServer:
    def start() -> BareServer:
        bare = BareServer(workdir, image.content, REPOSITORY, TAG)
        bare.start()
        return bare

    return on_a_free_port(start)
