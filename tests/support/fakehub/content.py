"""What the fake hub holds: blobs, and per repository its manifests and tags.

Plain Python state that tests may change at any time, also while the servers run. Blobs are
global (any existing repository can fetch any stored blob) unless ``strict_blobs``; manifests
and tags belong to a repository. The ``add_*`` builders make whole images (Docker schema 2 or
OCI), indexes and OCI 1.1 artifacts from a few bytes, with stable digests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from support.oci_image import sha256_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


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
    """A single-platform image created by ``add_image``."""

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


class HubContent:
    """Blobs, repositories, manifests and tags, and the builders that fill them."""

    def __init__(self, *, strict_blobs: bool = False) -> None:
        """strict_blobs: a repository serves only the blobs added for it (``add_blob(repo=)``,
        the images and artifacts made in it), as a real registry does."""
        self.strict_blobs = strict_blobs
        self.repositories: dict[str, Repository] = {}
        self.blobs: dict[str, bytes] = {}
        # digest -> repositories it was added for (what strict_blobs serves)
        self.blob_repositories: dict[str, set[str]] = {}

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

    def blob_in(self, repo: str, digest: str) -> bytes | None:
        """The bytes a blob request of ``repo`` gets (None: the registry does not have it)."""
        data = self.blobs.get(digest)
        if data is None or (
            self.strict_blobs and repo not in self.blob_repositories.get(digest, ())
        ):
            return None
        return data

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


def _split_platform(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform must be os/arch[/variant], got {platform!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None
