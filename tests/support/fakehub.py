"""An in-process fake Docker Hub for fault-injection and request-counting tests.

Two aiohttp apps listen on free loopback ports:

* the registry (``hub.url``): ``/v2/``, manifests (GET/HEAD), blobs (GET/HEAD), tags list,
  OCI 1.1 referrers (``referrers_api=True``; otherwise 404 as from Docker Hub and
  distribution 2.8) and the ``/token`` endpoint, with Docker Hub style bearer-token auth and
  rate-limit headers;
* the CDN (``hub.cdn_url``): blob bytes behind the registry's 307 redirect. It answers 400 to
  any request that carries an ``Authorization`` header, which is how a client leaking the
  registry token to another host shows up (``hub.cdn_auth_violations``).

Every request to either app is recorded as a ``RecordedRequest``; the ``count`` family of
methods reads those records. Faults are injected per test with the ``inject_*`` methods; each
returns a ``Fault`` that can be scoped to a server, a method, a path fragment (a digest, a tag,
a repository name) and to the next ``times`` matching requests.

Faults apply only to requests that got past authentication: the 401 challenge an
unauthenticated request receives never consumes one, so ``times=1`` means "the first real
attempt" whatever the client's auth dance looks like.

Typical use::

    async with FakeHub() as hub:
        image = hub.add_image("library/golang", "1.22", [b"layer one", b"layer two"])
        hub.inject_status(429, path_contains="/manifests/", times=1)
        ...  # run the proxy against hub.url
        assert hub.manifest_gets("library/golang") == 2

tests/conftest.py offers it as the ``fakehub`` fixture (default options) and the
``fakehub_factory`` fixture (``await fakehub_factory(users={"u": "p"}, rate_limit=5)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal, Self

from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.registry.credentials import basic_credentials

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

SERVICE = "registry.docker.io"
"""The ``service`` Docker Hub names in its challenges; /token insists on it."""

ServerName = Literal["registry", "cdn"]
RequestKind = Literal["base", "manifest", "blob", "tags", "referrers", "token", "cdn", "other"]
FaultKind = Literal[
    "status",
    "hang",
    "slow_first_byte",
    "drop_mid_blob",
    "pause_mid_blob",
    "wrong_bytes",
    "no_digest_header",
    "ignore_range",
]

_ERROR_MESSAGES: dict[str, str] = {
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "NAME_UNKNOWN": "repository name not known to registry",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "BLOB_UNKNOWN": "blob unknown to registry",
    "TAG_INVALID": "manifest tag did not match URI",
    "TOOMANYREQUESTS": (
        "You have reached your pull rate limit. You may increase the limit by "
        "authenticating and upgrading: https://www.docker.com/increase-rate-limit"
    ),
    "PAGINATION_NUMBER_INVALID": "invalid number of results requested",
    "UNSUPPORTED": "The operation is unsupported.",
    "UNAVAILABLE": "service unavailable",
    "UNKNOWN": "unknown error",
    "NOT_FOUND": "not found",
}

_DEFAULT_CODES: dict[int, str] = {
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NOT_FOUND",
    405: "UNSUPPORTED",
    429: "TOOMANYREQUESTS",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}

_MANIFEST_OR_BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/(?P<what>manifests|blobs)/(?P<ref>[^/]+)$")
_TAGS_PATH = re.compile(r"^/v2/(?P<repo>.+)/tags/list$")
_REFERRERS_PATH = re.compile(r"^/v2/(?P<repo>.+)/referrers/(?P<ref>[^/]+)$")
_CDN_PATH = re.compile(r"^/cdn/(?P<digest>[^/]+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def sha256_digest(data: bytes) -> str:
    """The content digest of ``data``, as registries spell it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoredManifest:
    """A manifest exactly as it is served: these bytes, this media type."""

    data: bytes
    media_type: str
    digest: str


@dataclass
class Repository:
    """One repository: its tags (tag -> manifest digest) and its manifests by digest."""

    tags: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, StoredManifest] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageInfo:
    """A single-platform image created by ``FakeHub.add_image``."""

    repo: str
    tag: str | None
    digest: str
    manifest: bytes
    media_type: str
    config_digest: str
    config: bytes
    layer_digests: tuple[str, ...]
    layers: tuple[bytes, ...]
    platform: str

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """Config first, then the layers: every blob a full pull fetches."""
        return (self.config_digest, *self.layer_digests)

    @property
    def blob_bytes(self) -> int:
        """Total size of the config and layer blobs."""
        return len(self.config) + sum(len(layer) for layer in self.layers)


@dataclass(frozen=True)
class IndexInfo:
    """A multi-platform image (OCI index or Docker manifest list) made by ``add_index``."""

    repo: str
    tag: str | None
    digest: str
    manifest: bytes
    media_type: str
    images: tuple[ImageInfo, ...]


@dataclass(frozen=True)
class ArtifactInfo:
    """An OCI 1.1 artifact (an image manifest with ``artifactType`` and ``subject``)."""

    repo: str
    digest: str
    manifest: bytes
    media_type: str
    artifact_type: str
    subject: str
    blob_digests: tuple[str, ...]


@dataclass
class IssuedToken:
    """A bearer token handed out by /token (or ``issue_token``)."""

    token: str
    username: str | None
    repositories: frozenset[str]
    expires_at: float
    """In the hub's ``clock`` time."""
    revoked: bool = False


@dataclass
class RecordedRequest:
    """One request seen by either app.

    ``status`` is filled in when the response headers go out; it stays ``None`` for a request
    still being held (gate, hang) or one aborted before any header was sent. ``aborted`` is
    true when the fake cut the connection on purpose (drop_mid_blob, hang at close).
    """

    server: ServerName
    method: str
    path: str
    query: str
    kind: RequestKind
    repo: str | None
    ref: str | None
    """The tag or digest of a manifest request, the digest of a blob or CDN request."""
    headers: CIMultiDictProxy[str]
    status: int | None = None
    aborted: bool = False

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def range(self) -> str | None:
        """The request's Range header, if any."""
        return self.headers.get("Range")

    @property
    def range_start(self) -> int | None:
        """The first byte a ``Range: bytes=N-[M]`` header asks for (None: no such header)."""
        match = _RANGE.match((self.range or "").strip())
        return int(match.group(1)) if match and match.group(1) else None


@dataclass(eq=False)
class Fault:
    """An injected misbehaviour; build them with the ``FakeHub.inject_*`` methods.

    A fault matches a request when every scope that is set matches: ``server``, ``method``,
    ``path_contains`` (a substring of the request path: a digest, ``/manifests/latest``,
    a repository name) and ``range_start`` (requests whose ``Range: bytes=N-`` starts at that
    byte: one piece of a blob fetched in pieces). ``times`` bounds how many requests it affects
    (``None``: all of them); ``hits`` counts the requests it has affected so far.
    """

    kind: FaultKind
    server: ServerName | None = None
    method: str | None = None
    path_contains: str | None = None
    times: int | None = None
    status: int = 500
    code: str | None = None
    retry_after: int | None = None
    delay: float | None = None
    gate: asyncio.Event | None = None
    after_bytes: int | None = None
    range_start: int | None = None
    hits: int = 0
    _hit: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.times is None or self.hits < self.times

    def matches(self, record: RecordedRequest) -> bool:
        if self.server is not None and record.server != self.server:
            return False
        if self.method is not None and record.method != self.method.upper():
            return False
        if self.range_start is not None and record.range_start != self.range_start:
            return False
        return self.path_contains is None or self.path_contains in record.path

    def release(self) -> None:
        """Open the gate of a slow_first_byte or pause_mid_blob fault."""
        if self.gate is not None:
            self.gate.set()

    # The bound is built in (ASYNC109) so that no test can wait forever by forgetting one.
    async def wait_hit(self, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until the fault has affected ``count`` requests (TimeoutError after timeout)."""
        async with asyncio.timeout(timeout):
            while self.hits < count:
                self._hit.clear()
                await self._hit.wait()

    def _consume(self) -> None:
        self.hits += 1
        self._hit.set()


class FakeHub:
    """A fake Docker Hub: registry + token server + CDN, with counters and fault injection.

    Content is plain Python state that tests may change at any time, also while the servers
    run. Blobs are global (any existing repository can fetch any stored blob) unless
    ``strict_blobs``; manifests and tags belong to a repository.
    """

    tags_list_includes_last = False
    """True: ``tags/list?last=T`` lists T itself again, as CNCF distribution 2.8 does (Docker
    Hub and the distribution spec start after T)."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = True,
        require_auth: bool = True,
        token_ttl: int = 300,
        rate_limit: int | None = 100,
        rate_window: int = 21600,
        rate_limit_source: str | None = None,
        retry_after: int = 60,
        redirect_blobs: bool = True,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        strict_blobs: bool = False,
        referrers_api: bool = False,
        referrers_page_size: int | None = None,
    ) -> None:
        """Configure the fake; nothing listens until ``start()`` (or ``async with``).

        users: username -> password accepted by /token with Basic auth.
        allow_anonymous: /token issues tokens to requests without credentials.
        require_auth: the registry demands a bearer token (False: everything is open).
        token_ttl: ``expires_in`` of new tokens, in seconds of ``clock``.
        rate_limit: pulls (manifest GETs) allowed; ``None`` sends no rate-limit headers.
        rate_limit_source: ``docker-ratelimit-source`` value; default: the token's user
            name, or the client's address for anonymous pulls.
        retry_after: Retry-After of 429 answers that do not set their own.
        redirect_blobs: blob GETs answer 307 to the CDN; False serves the bytes directly.
        clock: time source for token expiry, so tests can move time by hand.
        strict_blobs: a repository serves only the blobs added for it (``add_blob(repo=)``,
            the images and artifacts made in it), as a real registry does.
        referrers_api: serve ``/v2/<repo>/referrers/<digest>`` (OCI 1.1), with artifactType
            filtering; False answers 404 like Docker Hub and distribution 2.8.
        referrers_page_size: page the referrers list (``Link: ...; rel="next"``).
        """
        self.users: dict[str, str] = dict(users or {})
        self.allow_anonymous = allow_anonymous
        self.require_auth = require_auth
        self.token_ttl = token_ttl
        self.rate_limit = rate_limit
        self.rate_remaining = rate_limit if rate_limit is not None else 0
        self.rate_window = rate_window
        self.rate_limit_source = rate_limit_source
        self.retry_after = retry_after
        self.redirect_blobs = redirect_blobs
        self.clock = clock
        self.host = host
        self.strict_blobs = strict_blobs
        self.referrers_api = referrers_api
        self.referrers_page_size = referrers_page_size

        self.repositories: dict[str, Repository] = {}
        self.blobs: dict[str, bytes] = {}
        # digest -> repositories it was added for (what strict_blobs serves)
        self.blob_repositories: dict[str, set[str]] = {}
        self.tokens: dict[str, IssuedToken] = {}
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []

        self._cdn_secret = secrets.token_bytes(16)
        self._runners: list[web.AppRunner] = []
        self._registry_port: int | None = None
        self._cdn_port: int | None = None
        self._closing = asyncio.Event()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the registry and the CDN on free ports of ``host``."""
        if self._runners:
            raise RuntimeError("FakeHub already started")
        self._closing = asyncio.Event()
        self._registry_port = await self._serve(self._registry_entry)
        self._cdn_port = await self._serve(self._cdn_entry)

    async def close(self) -> None:
        """Stop both apps; held and hung requests are cut off first."""
        self._closing.set()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve(self, entry: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", entry)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        address = runner.addresses[-1]
        port = address[1]
        assert isinstance(port, int)
        return port

    @property
    def url(self) -> str:
        """Base URL of the registry, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://{self.registry_host}"

    @property
    def registry_host(self) -> str:
        """``host:port`` of the registry."""
        if self._registry_port is None:
            raise RuntimeError("FakeHub not started")
        return f"{self.host}:{self._registry_port}"

    @property
    def cdn_url(self) -> str:
        """Base URL of the CDN app."""
        if self._cdn_port is None:
            raise RuntimeError("FakeHub not started")
        return f"http://{self.host}:{self._cdn_port}"

    @property
    def token_url(self) -> str:
        """The ``realm`` of the bearer challenge."""
        return f"{self.url}/token"

    def cdn_blob_url(self, digest: str) -> str:
        """The signed CDN URL a blob GET redirects to."""
        return f"{self.cdn_url}/cdn/{digest}?sig={self._sign(digest)}"

    # ------------------------------------------------------------------ content

    def add_blob(self, data: bytes, *, repo: str | None = None) -> str:
        """Store a blob and return its digest; ``repo`` also creates that repository."""
        digest = sha256_digest(data)
        self.blobs[digest] = data
        if repo is not None:
            self.repositories.setdefault(repo, Repository())
            self.blob_repositories.setdefault(digest, set()).add(repo)
        return digest

    def delete_blob(self, digest: str) -> None:
        self.blobs.pop(digest, None)

    def add_manifest(self, repo: str, data: bytes, media_type: str, tag: str | None = None) -> str:
        """Store manifest bytes as they are (no validation) and return their digest."""
        digest = sha256_digest(data)
        repository = self.repositories.setdefault(repo, Repository())
        repository.manifests[digest] = StoredManifest(data, media_type, digest)
        if tag is not None:
            repository.tags[tag] = digest
        return digest

    def get_manifest(self, repo: str, reference: str) -> StoredManifest | None:
        """The manifest a GET of ``/v2/<repo>/manifests/<reference>`` would serve."""
        repository = self.repositories.get(repo)
        if repository is None:
            return None
        digest = reference if ":" in reference else repository.tags.get(reference)
        return repository.manifests.get(digest) if digest is not None else None

    def set_tag(self, repo: str, tag: str, digest: str) -> None:
        """Point ``tag`` at a manifest already stored in ``repo``."""
        repository = self.repositories.get(repo)
        if repository is None or digest not in repository.manifests:
            raise KeyError(f"{repo}@{digest} is not stored")
        repository.tags[tag] = digest

    def delete_tag(self, repo: str, tag: str) -> None:
        repository = self.repositories.get(repo)
        if repository is not None:
            repository.tags.pop(tag, None)

    def add_image(
        self,
        repo: str,
        tag: str | None,
        layers: Sequence[bytes] | None = None,
        *,
        oci: bool = False,
        platform: str = "linux/amd64",
    ) -> ImageInfo:
        """Store layers, a config and a manifest (Docker schema2, or OCI with ``oci=True``).

        Layers are opaque bytes (not real tarballs). Without ``layers`` one small layer
        derived from the repository, tag and platform is made up, so digests are stable.
        The manifest is indented JSON: a client that re-serializes it changes its digest.
        """
        if layers is None:
            layers = [f"layer of {repo}:{tag} for {platform}".encode()]
        os_name, arch, variant = _split_platform(platform)
        layer_digests = tuple(self.add_blob(layer, repo=repo) for layer in layers)
        config_doc: dict[str, object] = {
            "architecture": arch,
            "os": os_name,
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": list(layer_digests)},
        }
        if variant is not None:
            config_doc["variant"] = variant
        config = json.dumps(config_doc, indent=2).encode()
        config_digest = self.add_blob(config, repo=repo)
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        layer_type = OCI_LAYER if oci else DOCKER_LAYER
        manifest_doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "size": len(config),
                "digest": config_digest,
            },
            "layers": [
                {"mediaType": layer_type, "size": len(layer), "digest": digest}
                for layer, digest in zip(layers, layer_digests, strict=True)
            ],
        }
        manifest = json.dumps(manifest_doc, indent=3).encode()
        digest = self.add_manifest(repo, manifest, media_type, tag)
        return ImageInfo(
            repo=repo,
            tag=tag,
            digest=digest,
            manifest=manifest,
            media_type=media_type,
            config_digest=config_digest,
            config=config,
            layer_digests=layer_digests,
            layers=tuple(layers),
            platform=platform,
        )

    def add_index(
        self,
        repo: str,
        tag: str | None,
        images: Sequence[ImageInfo],
        *,
        oci: bool = False,
    ) -> IndexInfo:
        """Store an OCI index (``oci=True``) or a Docker manifest list over ``images``.

        Platform manifests stored in another repository are copied into ``repo``.
        """
        entries: list[dict[str, object]] = []
        for image in images:
            if image.repo != repo:
                self.add_manifest(repo, image.manifest, image.media_type)
                for blob in image.blob_digests:
                    self.blob_repositories.setdefault(blob, set()).add(repo)
            os_name, arch, variant = _split_platform(image.platform)
            platform: dict[str, str] = {"architecture": arch, "os": os_name}
            if variant is not None:
                platform["variant"] = variant
            entries.append(
                {
                    "mediaType": image.media_type,
                    "size": len(image.manifest),
                    "digest": image.digest,
                    "platform": platform,
                }
            )
        media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
        manifest = json.dumps(doc, indent=3).encode()
        digest = self.add_manifest(repo, manifest, media_type, tag)
        return IndexInfo(repo, tag, digest, manifest, media_type, tuple(images))

    def add_multiarch_image(
        self,
        repo: str,
        tag: str,
        platforms: Iterable[str] = ("linux/amd64", "linux/arm64/v8"),
        *,
        oci: bool = False,
    ) -> IndexInfo:
        """One small untagged image per platform plus an index tagged ``tag``."""
        images = [
            self.add_image(
                repo,
                None,
                [f"layer of {repo}:{tag} for {platform}".encode()],
                oci=oci,
                platform=platform,
            )
            for platform in platforms
        ]
        return self.add_index(repo, tag, images, oci=oci)

    def add_artifact(
        self,
        repo: str,
        subject: str,
        artifact_type: str,
        payload: bytes,
        *,
        tag: str | None = None,
        media_type: str = OCI_MANIFEST,
        annotations: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Store an artifact about manifest ``subject`` (a signature, an SBOM): one payload blob
        and the empty config, in an OCI image manifest with ``artifactType`` and ``subject``
        (``media_type`` may name another type, e.g. the OCI 1.1-rc artifact manifest)."""
        empty = self.add_blob(b"{}", repo=repo)
        blob = self.add_blob(payload, repo=repo)
        target = self.get_manifest(repo, subject)
        doc: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "artifactType": artifact_type,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [
                {"mediaType": "application/octet-stream", "digest": blob, "size": len(payload)}
            ],
            "subject": {
                "mediaType": target.media_type if target is not None else OCI_MANIFEST,
                "digest": subject,
                "size": len(target.data) if target is not None else 0,
            },
        }
        if annotations:
            doc["annotations"] = dict(annotations)
        manifest = json.dumps(doc, indent=2).encode()
        digest = self.add_manifest(repo, manifest, media_type, tag)
        return ArtifactInfo(
            repo, digest, manifest, media_type, artifact_type, subject, (empty, blob)
        )

    def referrers(self, repo: str, subject: str) -> list[dict[str, object]]:
        """The descriptors the referrers API lists for ``subject`` in ``repo``."""
        repository = self.repositories.get(repo)
        found: list[dict[str, object]] = []
        for stored in repository.manifests.values() if repository else ():
            try:
                doc = json.loads(stored.data)
            except ValueError:
                continue
            if not isinstance(doc, dict) or (doc.get("subject") or {}).get("digest") != subject:
                continue
            descriptor: dict[str, object] = {
                "mediaType": stored.media_type,
                "digest": stored.digest,
                "size": len(stored.data),
            }
            artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
            if artifact_type:
                descriptor["artifactType"] = artifact_type
            if doc.get("annotations"):
                descriptor["annotations"] = doc["annotations"]
            found.append(descriptor)
        return sorted(found, key=lambda d: str(d["digest"]))

    # ------------------------------------------------------------------ auth

    def issue_token(self, repositories: Iterable[str], *, username: str | None = None) -> str:
        """Mint a token allowing pulls of ``repositories`` (what /token does)."""
        token = secrets.token_urlsafe(24)
        self.tokens[token] = IssuedToken(
            token=token,
            username=username,
            repositories=frozenset(repositories),
            expires_at=self.clock() + self.token_ttl,
        )
        return token

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far (the registry answers 401 invalid_token)."""
        for issued in self.tokens.values():
            issued.revoked = True

    def revoke_token(self, token: str) -> None:
        if token in self.tokens:
            self.tokens[token].revoked = True

    def set_rate_limit(self, limit: int | None, remaining: int | None = None) -> None:
        """Change the pull limit; ``remaining`` defaults to the full ``limit``."""
        self.rate_limit = limit
        if limit is None:
            self.rate_remaining = 0
        else:
            self.rate_remaining = limit if remaining is None else remaining

    # ------------------------------------------------------------------ counters

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        server: ServerName | None = "registry",
        *,
        kind: RequestKind | None = None,
        status: int | None = None,
    ) -> int:
        """Recorded requests matching every filter given (``server=None``: both apps)."""
        return len(self.matching(method, path_contains, server, kind=kind, status=status))

    def matching(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        server: ServerName | None = "registry",
        *,
        kind: RequestKind | None = None,
        status: int | None = None,
    ) -> list[RecordedRequest]:
        """The recorded requests ``count`` would count."""
        wanted_method = method.upper() if method is not None else None
        return [
            record
            for record in self.requests
            if (server is None or record.server == server)
            and (wanted_method is None or record.method == wanted_method)
            and (path_contains is None or path_contains in record.path)
            and (kind is None or record.kind == kind)
            and (status is None or record.status == status)
        ]

    def _count_kind(
        self,
        server: ServerName,
        kind: RequestKind,
        method: str,
        repo: str | None,
        ref: str | None,
    ) -> int:
        return sum(
            1
            for record in self.requests
            if record.server == server
            and record.kind == kind
            and record.method == method
            and (repo is None or record.repo == repo)
            and (ref is None or record.ref == ref)
        )

    def manifest_gets(self, repo: str | None = None, ref: str | None = None) -> int:
        """Manifest GETs on the registry (what Docker Hub counts as pulls), any status."""
        return self._count_kind("registry", "manifest", "GET", repo, ref)

    def manifest_heads(self, repo: str | None = None, ref: str | None = None) -> int:
        return self._count_kind("registry", "manifest", "HEAD", repo, ref)

    def blob_gets(self, digest: str | None = None) -> int:
        """Blob GETs on the registry side (each normally answered with a 307)."""
        return self._count_kind("registry", "blob", "GET", None, digest)

    def blob_heads(self, digest: str | None = None) -> int:
        return self._count_kind("registry", "blob", "HEAD", None, digest)

    def cdn_gets(self, digest: str | None = None) -> int:
        """GETs that reached the CDN (blob bytes actually downloaded, or attempted)."""
        return self._count_kind("cdn", "cdn", "GET", None, digest)

    def blob_ranges(self, digest: str, server: ServerName = "cdn") -> list[str | None]:
        """The Range header of each GET of the blob's bytes, in order (None: no Range):
        on the CDN, or on the registry (``server="registry"``) when redirects are off."""
        kind: RequestKind = "cdn" if server == "cdn" else "blob"
        return [
            record.range
            for record in self.requests
            if record.server == server
            and record.kind == kind
            and record.method == "GET"
            and record.ref == digest
            and (server == "cdn" or record.status != 401)
        ]

    def token_requests(self) -> int:
        return sum(1 for record in self.requests if record.kind == "token")

    @property
    def cdn_auth_violations(self) -> int:
        """CDN requests that carried an Authorization header (each answered 400)."""
        return sum(
            1
            for record in self.requests
            if record.server == "cdn" and record.authorization is not None
        )

    def reset_counts(self) -> None:
        """Forget every recorded request (content, tokens and faults stay)."""
        self.requests.clear()

    # Bounded by design, like Fault.wait_hit.
    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever a request arrives, gets
        its status or trips a fault. TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # ------------------------------------------------------------------ faults

    def inject(self, fault: Fault) -> Fault:
        """Add a fault (faults are tried in the order they were added)."""
        self.faults.append(fault)
        return fault

    def remove_fault(self, fault: Fault) -> None:
        if fault in self.faults:
            self.faults.remove(fault)

    def clear_faults(self) -> None:
        """Remove every fault, releasing the gates of any held request."""
        for fault in self.faults:
            fault.release()
        self.faults.clear()

    def inject_status(
        self,
        status: int,
        *,
        retry_after: int | None = None,
        code: str | None = None,
        path_contains: str | None = None,
        method: str | None = None,
        server: ServerName | None = None,
        times: int | None = None,
        range_start: int | None = None,
    ) -> Fault:
        """Answer ``status`` instead of the real response, with a registry errors body.

        429 carries Retry-After (``retry_after`` or the hub's default) and TOOMANYREQUESTS;
        401 carries a bearer challenge with ``error="invalid_token"``; other statuses
        carry Retry-After only when ``retry_after`` is given. ``code`` overrides the error
        code (defaults: UNAUTHORIZED, DENIED, TOOMANYREQUESTS, UNAVAILABLE, UNKNOWN).
        """
        return self.inject(
            Fault(
                "status",
                server=server,
                method=method,
                path_contains=path_contains,
                times=times,
                range_start=range_start,
                status=status,
                code=code,
                retry_after=retry_after,
            )
        )

    def inject_hang(
        self,
        *,
        path_contains: str | None = None,
        method: str | None = None,
        server: ServerName | None = None,
        times: int | None = None,
    ) -> Fault:
        """Never answer (no status line) until the hub is closed, then cut the connection."""
        return self.inject(
            Fault(
                "hang",
                server=server,
                method=method,
                path_contains=path_contains,
                times=times,
            )
        )

    def inject_slow_first_byte(
        self,
        *,
        delay: float | None = None,
        gate: asyncio.Event | None = None,
        path_contains: str | None = None,
        method: str | None = None,
        server: ServerName | None = None,
        times: int | None = None,
    ) -> Fault:
        """Hold matching requests before anything is sent, then answer normally.

        The hold ends when ``gate`` is set or after ``delay`` seconds, whichever comes
        first. With neither given a fresh gate is made: open it with ``fault.release()``.
        Use ``await fault.wait_hit()`` to know a request is being held.
        """
        if gate is None and delay is None:
            gate = asyncio.Event()
        return self.inject(
            Fault(
                "slow_first_byte",
                server=server,
                method=method,
                path_contains=path_contains,
                times=times,
                delay=delay,
                gate=gate,
            )
        )

    def inject_drop_mid_blob(
        self,
        digest: str | None = None,
        *,
        after_bytes: int | None = None,
        path_contains: str | None = None,
        server: ServerName | None = None,
        times: int | None = None,
        range_start: int | None = None,
    ) -> Fault:
        """Send the headers with the full Content-Length, ``after_bytes`` bytes (default:
        half the body), then close the connection.

        Applies wherever body bytes are served: the CDN, the registry when redirects are
        off, and manifest GETs when scoped to them. ``digest`` scopes it to one blob.
        """
        return self.inject(
            Fault(
                "drop_mid_blob",
                server=server,
                method="GET",
                path_contains=digest if digest is not None else path_contains,
                times=times,
                range_start=range_start,
                after_bytes=after_bytes,
            )
        )

    def inject_pause_mid_blob(
        self,
        digest: str | None = None,
        *,
        after_bytes: int | None = None,
        gate: asyncio.Event | None = None,
        delay: float | None = None,
        path_contains: str | None = None,
        server: ServerName | None = None,
        times: int | None = None,
        range_start: int | None = None,
    ) -> Fault:
        """Send headers and ``after_bytes`` bytes (default: half), wait for the gate (or
        ``delay``), then send the rest: a slow body whose timing the test controls."""
        if gate is None and delay is None:
            gate = asyncio.Event()
        return self.inject(
            Fault(
                "pause_mid_blob",
                server=server,
                method="GET",
                path_contains=digest if digest is not None else path_contains,
                times=times,
                range_start=range_start,
                after_bytes=after_bytes,
                gate=gate,
                delay=delay,
            )
        )

    def inject_wrong_bytes(
        self,
        digest: str | None = None,
        *,
        path_contains: str | None = None,
        server: ServerName | None = None,
        times: int | None = None,
        range_start: int | None = None,
    ) -> Fault:
        """Serve a body of the right length with one byte flipped (headers unchanged, so
        Docker-Content-Digest still names the real digest). Applies to blob bytes and to
        manifest GETs, like ``inject_drop_mid_blob``."""
        return self.inject(
            Fault(
                "wrong_bytes",
                server=server,
                method="GET",
                path_contains=digest if digest is not None else path_contains,
                times=times,
                range_start=range_start,
            )
        )

    def inject_ignore_range(
        self,
        digest: str | None = None,
        *,
        server: ServerName | None = None,
        times: int | None = None,
        range_start: int | None = None,
    ) -> Fault:
        """Answer ranged GETs with 200 and the whole body, as servers that do not support
        Range do (``times=None``: an upstream or CDN that never honours Range)."""
        return self.inject(
            Fault(
                "ignore_range",
                server=server,
                method="GET",
                path_contains=digest,
                times=times,
                range_start=range_start,
            )
        )

    def inject_no_digest_header(
        self,
        *,
        method: str | None = "HEAD",
        path_contains: str | None = None,
        times: int | None = None,
    ) -> Fault:
        """Leave Docker-Content-Digest out of manifest and blob responses (HEAD by default;
        ``method=None`` for GET too)."""
        return self.inject(
            Fault(
                "no_digest_header",
                server="registry",
                method=method,
                path_contains=path_contains,
                times=times,
            )
        )

    def _take_fault(self, record: RecordedRequest, kind: FaultKind) -> Fault | None:
        for fault in self.faults:
            if fault.kind == kind and fault.active and fault.matches(record):
                fault._consume()
                self._notify()
                return fault
        return None

    # ------------------------------------------------------------------ plumbing

    def _notify(self) -> None:
        self._changed.set()

    def _record(self, server: ServerName, request: web.Request) -> RecordedRequest:
        kind, repo, ref = _classify(server, request.path)
        record = RecordedRequest(
            server=server,
            method=request.method,
            path=request.path,
            query=request.query_string,
            kind=kind,
            repo=repo,
            ref=ref,
            headers=request.headers,
        )
        self.requests.append(record)
        self._notify()
        return record

    def _finish(self, record: RecordedRequest, response: web.StreamResponse) -> None:
        """Note the status of a response about to go out (unless the fake cut the line)."""
        if record.server == "registry" and not response.prepared:
            response.headers.setdefault("Docker-Distribution-Api-Version", "registry/2.0")
        if not record.aborted and record.status is None:
            record.status = response.status
            self._notify()

    def _abort(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        """Cut the connection; aiohttp then fails to write the returned response and drops
        it quietly."""
        record.aborted = True
        self._notify()
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)

    async def _hold(self, gate: asyncio.Event | None, delay: float | None) -> None:
        """Wait for the gate, the delay or the hub's close, whichever comes first."""
        waiters = [asyncio.ensure_future(self._closing.wait())]
        if gate is not None:
            waiters.append(asyncio.ensure_future(gate.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _pre_response_faults(
        self, request: web.Request, record: RecordedRequest
    ) -> web.StreamResponse | None:
        if self._take_fault(record, "hang") is not None:
            await self._closing.wait()
            return self._abort(request, record)
        slow = self._take_fault(record, "slow_first_byte")
        if slow is not None:
            await self._hold(slow.gate, slow.delay)
            if self._closing.is_set():
                return self._abort(request, record)
        status = self._take_fault(record, "status")
        if status is not None:
            return self._status_fault_response(record, status)
        return None

    def _status_fault_response(self, record: RecordedRequest, fault: Fault) -> web.Response:
        headers: dict[str, str] = {}
        code = fault.code or _DEFAULT_CODES.get(fault.status, "UNKNOWN")
        if fault.status == 429:
            headers["Retry-After"] = str(
                fault.retry_after if fault.retry_after is not None else self.retry_after
            )
        elif fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.status == 401:
            headers["WWW-Authenticate"] = self._challenge(record.repo, "invalid_token")
        if record.kind == "manifest":
            headers.update(self._rate_headers(None))
        return _error_response(fault.status, code, headers=headers)

    def _challenge(self, repo: str | None, error: str | None) -> str:
        value = f'Bearer realm="{self.token_url}",service="{SERVICE}"'
        if repo is not None:
            value += f',scope="repository:{repo}:pull"'
        if error is not None:
            value += f',error="{error}"'
        return value

    def _check_token(
        self, request: web.Request, repo: str | None
    ) -> tuple[IssuedToken | None, str | None]:
        """(token, None) when allowed; (None, "" or error name) when not."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None, ""
        issued = self.tokens.get(credential.strip())
        if issued is None or issued.revoked or self.clock() >= issued.expires_at:
            return None, "invalid_token"
        if repo is not None and repo not in issued.repositories:
            return None, "insufficient_scope"
        return issued, None

    def _rate_headers(self, identity: str | None) -> dict[str, str]:
        if self.rate_limit is None:
            return {}
        source = self.rate_limit_source or identity or self.host
        return {
            "ratelimit-limit": f"{self.rate_limit};w={self.rate_window}",
            "ratelimit-remaining": f"{max(self.rate_remaining, 0)};w={self.rate_window}",
            "docker-ratelimit-source": source,
        }

    def _sign(self, digest: str) -> str:
        return hmac.new(self._cdn_secret, digest.encode(), hashlib.sha256).hexdigest()[:32]

    # ------------------------------------------------------------------ registry app

    async def _registry_entry(self, request: web.Request) -> web.StreamResponse:
        record = self._record("registry", request)
        response = await self._registry_dispatch(request, record)
        self._finish(record, response)
        return response

    async def _registry_dispatch(
        self, request: web.Request, record: RecordedRequest
    ) -> web.StreamResponse:
        if record.kind == "token":
            held = await self._pre_response_faults(request, record)
            return held if held is not None else self._token(request)

        if record.kind == "referrers" and not self.referrers_api:
            # As Docker Hub and distribution 2.8: no such route, before any authentication.
            return web.Response(status=404, text="404 page not found\n")
        identity: str | None = request.remote
        if self.require_auth and record.kind != "other":
            issued, problem = self._check_token(request, record.repo)
            if issued is None:
                return _error_response(
                    401,
                    "UNAUTHORIZED",
                    headers={"WWW-Authenticate": self._challenge(record.repo, problem or None)},
                    detail=[
                        {"Type": "repository", "Class": "", "Name": record.repo, "Action": "pull"}
                    ]
                    if record.repo is not None
                    else None,
                )
            identity = issued.username or identity

        held = await self._pre_response_faults(request, record)
        if held is not None:
            return held
        if request.method not in ("GET", "HEAD"):
            return _error_response(405, "UNSUPPORTED")
        if record.kind == "base":
            return web.json_response({})
        if record.kind == "manifest":
            return await self._manifest(request, record, identity)
        if record.kind == "blob":
            return await self._blob(request, record)
        if record.kind == "tags":
            return self._tags(request, record)
        if record.kind == "referrers":
            return self._referrers(request, record)
        return _error_response(404, "NOT_FOUND")

    def _token(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return web.json_response({"details": "method not allowed"}, status=405)
        if request.query.get("service") != SERVICE:
            return web.json_response({"details": f"service must be {SERVICE}"}, status=400)
        username: str | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            credentials = basic_credentials(header)
            if credentials is None:
                return web.json_response({"details": "malformed credentials"}, status=401)
            login, password = credentials
            if login not in self.users or self.users[login] != password:
                return web.json_response({"details": "incorrect username or password"}, status=401)
            username = login
        elif not self.allow_anonymous:
            return web.json_response({"details": "authentication required"}, status=401)

        repositories: set[str] = set()
        for scope in request.query.getall("scope", []):
            for item in scope.split():
                parts = item.split(":")
                if len(parts) >= 3 and parts[0] == "repository" and "pull" in parts[-1].split(","):
                    repositories.add(":".join(parts[1:-1]))
        token = self.issue_token(repositories, username=username)
        issued_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.token_ttl,
                "issued_at": issued_at,
            }
        )

    async def _manifest(
        self, request: web.Request, record: RecordedRequest, identity: str | None
    ) -> web.StreamResponse:
        assert record.repo is not None and record.ref is not None
        rate_headers = self._rate_headers(identity)
        if record.repo not in self.repositories:
            return _error_response(404, "NAME_UNKNOWN", headers=rate_headers)
        stored = self.get_manifest(record.repo, record.ref)
        if stored is None:
            return _error_response(404, "MANIFEST_UNKNOWN", headers=rate_headers)
        is_get = request.method == "GET"
        if is_get and self.rate_limit is not None and self.rate_remaining <= 0:
            return _error_response(
                429,
                "TOOMANYREQUESTS",
                headers={**rate_headers, "Retry-After": str(self.retry_after)},
            )
        headers = {"Content-Type": stored.media_type, "ETag": f'"{stored.digest}"'}
        if self._take_fault(record, "no_digest_header") is None:
            headers["Docker-Content-Digest"] = stored.digest
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers={**headers, **rate_headers})
        if is_get and self.rate_limit is not None:
            self.rate_remaining -= 1
            rate_headers = self._rate_headers(identity)
        headers.update(rate_headers)
        return await self._send_body(request, record, stored.data, headers)

    async def _blob(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        assert record.repo is not None and record.ref is not None
        if record.repo not in self.repositories:
            return _error_response(404, "NAME_UNKNOWN")
        data = self.blobs.get(record.ref)
        if data is None or (
            self.strict_blobs and record.repo not in self.blob_repositories.get(record.ref, ())
        ):
            return _error_response(404, "BLOB_UNKNOWN")
        if request.method == "GET" and self.redirect_blobs:
            return web.Response(status=307, headers={"Location": self.cdn_blob_url(record.ref)})
        headers = {"Content-Type": "application/octet-stream"}
        if self._take_fault(record, "no_digest_header") is None:
            headers["Docker-Content-Digest"] = record.ref
        return await self._send_body(request, record, data, headers)

    def _tags(self, request: web.Request, record: RecordedRequest) -> web.Response:
        assert record.repo is not None
        repository = self.repositories.get(record.repo)
        if repository is None:
            return _error_response(404, "NAME_UNKNOWN")
        tags = sorted(repository.tags)
        last = request.query.get("last")
        if last:
            again = self.tags_list_includes_last
            tags = [tag for tag in tags if tag > last or (again and tag == last)]
        headers: dict[str, str] = {}
        raw_n = request.query.get("n")
        if raw_n is not None:
            try:
                n = int(raw_n)
            except ValueError:
                n = -1
            if n < 0:
                return _error_response(400, "PAGINATION_NUMBER_INVALID")
            if len(tags) > n > 0:
                headers["Link"] = (
                    f'</v2/{record.repo}/tags/list?n={n}&last={tags[n - 1]}>; rel="next"'
                )
            tags = tags[:n]
        return web.json_response({"name": record.repo, "tags": tags}, headers=headers)

    def _referrers(self, request: web.Request, record: RecordedRequest) -> web.Response:
        assert record.repo is not None and record.ref is not None
        if request.method != "GET":
            return _error_response(405, "UNSUPPORTED")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", record.ref):
            return _error_response(400, "DIGEST_INVALID")
        descriptors = self.referrers(record.repo, record.ref)
        headers: dict[str, str] = {}
        artifact_type = request.query.get("artifactType")
        if artifact_type:
            descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
            headers["OCI-Filters-Applied"] = "artifactType"
        size = self.referrers_page_size
        if size is not None:
            start = int(request.query.get("page", "0"))
            if start + size < len(descriptors):
                query = f"page={start + size}" + (
                    f"&artifactType={artifact_type}" if artifact_type else ""
                )
                headers["Link"] = f'</v2/{record.repo}/referrers/{record.ref}?{query}>; rel="next"'
            descriptors = descriptors[start : start + size]
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return web.json_response(body, headers=headers, content_type=OCI_INDEX)

    # ------------------------------------------------------------------ CDN app

    async def _cdn_entry(self, request: web.Request) -> web.StreamResponse:
        record = self._record("cdn", request)
        response = await self._cdn_dispatch(request, record)
        self._finish(record, response)
        return response

    async def _cdn_dispatch(
        self, request: web.Request, record: RecordedRequest
    ) -> web.StreamResponse:
        if "Authorization" in request.headers:
            return web.Response(
                status=400,
                text="Only one auth mechanism allowed: the signed URL already authorizes "
                "this request, an Authorization header must not be sent to the CDN",
            )
        held = await self._pre_response_faults(request, record)
        if held is not None:
            return held
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="method not allowed")
        if record.kind != "cdn" or record.ref is None:
            return web.Response(status=404, text="not found")
        if not hmac.compare_digest(request.query.get("sig", ""), self._sign(record.ref)):
            return web.Response(status=403, text="bad signature")
        data = self.blobs.get(record.ref)
        if data is None:
            return web.Response(status=404, text="no such object")
        return await self._send_body(
            request, record, data, {"Content-Type": "application/octet-stream"}
        )

    # ------------------------------------------------------------------ bodies

    async def _send_body(
        self,
        request: web.Request,
        record: RecordedRequest,
        data: bytes,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Serve ``data`` (with single-range support) and apply the body faults."""
        status = 200
        headers = {**headers, "Accept-Ranges": "bytes"}
        range_header = request.headers.get("Range")
        if range_header is not None and self._take_fault(record, "ignore_range") is not None:
            range_header = None
        if request.method == "GET" and range_header is not None:
            match = _RANGE.match(range_header.strip())
            if match is not None:
                span = _resolve_range(match.group(1), match.group(2), len(data))
                if span is None:
                    return web.Response(
                        status=416, headers={"Content-Range": f"bytes */{len(data)}"}
                    )
                start, end = span
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                data = data[start:end]
                status = 206
        if request.method == "HEAD":
            return web.Response(status=status, body=data, headers=headers)

        if self._take_fault(record, "wrong_bytes") is not None:
            data = _corrupt(data)
        cut_fault = self._take_fault(record, "drop_mid_blob")
        if cut_fault is None:
            cut_fault = self._take_fault(record, "pause_mid_blob")
        if cut_fault is None:
            return web.Response(status=status, body=data, headers=headers)

        cut = len(data) // 2 if cut_fault.after_bytes is None else cut_fault.after_bytes
        cut = max(0, min(cut, len(data)))
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        self._finish(record, response)
        await response.prepare(request)
        await response.write(data[:cut])
        if cut_fault.kind == "drop_mid_blob":
            return self._abort(request, record)
        await self._hold(cut_fault.gate, cut_fault.delay)
        if self._closing.is_set():
            return self._abort(request, record)
        await response.write(data[cut:])
        await response.write_eof()
        return response


def _classify(server: ServerName, path: str) -> tuple[RequestKind, str | None, str | None]:
    if server == "cdn":
        cdn = _CDN_PATH.match(path)
        return ("cdn", None, cdn.group("digest")) if cdn else ("other", None, None)
    if path in ("/v2", "/v2/"):
        return "base", None, None
    if path == "/token":
        return "token", None, None
    item = _MANIFEST_OR_BLOB_PATH.match(path)
    if item is not None:
        kind: RequestKind = "manifest" if item.group("what") == "manifests" else "blob"
        return kind, item.group("repo"), item.group("ref")
    tags = _TAGS_PATH.match(path)
    if tags is not None:
        return "tags", tags.group("repo"), None
    referrers = _REFERRERS_PATH.match(path)
    if referrers is not None:
        return "referrers", referrers.group("repo"), referrers.group("ref")
    return "other", None, None


def _error_response(
    status: int,
    code: str,
    *,
    headers: Mapping[str, str] | None = None,
    detail: object = None,
) -> web.Response:
    error: dict[str, object] = {"code": code, "message": _ERROR_MESSAGES.get(code, code)}
    if detail is not None:
        error["detail"] = detail
    return web.json_response({"errors": [error]}, status=status, headers=headers)


def _resolve_range(first: str, last: str, size: int) -> tuple[int, int] | None:
    """[start, end) for ``bytes=first-last``, or None when it cannot be satisfied."""
    if first == "":
        if last == "" or int(last) == 0:
            return None
        return max(size - int(last), 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        return None
    return start, end


def _corrupt(data: bytes) -> bytes:
    if not data:
        return data
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _split_platform(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform must be os/arch[/variant], got {platform!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None
