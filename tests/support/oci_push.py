"""Push and delete content on a real registry with plain HTTP requests (no oras, no skopeo).

For what skopeo cannot push: OCI 1.1 artifacts (an image manifest with ``artifactType`` and a
``subject``), indexes written by hand (the referrers tag schema), and deletions. Blobs go up in one
monolithic upload (POST, then PUT with ``?digest=``), as the distribution spec allows.

Use::

    registry = RegistryWriter(upstream)            # a support.distribution.Distribution
    digest = registry.push_blob("library/golang", b"{}")
    registry.push_manifest("library/golang", "sha256-...sig", data, OCI_MANIFEST)
    registry.delete_manifest("library/golang", digest)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from support.distribution import Distribution
from support.oci_image import OCI_INDEX, OCI_MANIFEST, sha256_digest

OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


@dataclass(frozen=True)
class PushedArtifact:
    repository: str
    digest: str
    manifest: bytes
    media_type: str
    artifact_type: str
    subject: str

    def descriptor(self) -> dict[str, Any]:
        """The descriptor the referrers API (or the referrers tag's index) lists it with."""
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest),
            "artifactType": self.artifact_type,
        }


class RegistryWriter:
    def __init__(self, registry: Distribution, timeout: float = 30.0) -> None:
        self.registry = registry
        self.timeout = timeout

    def _send(
        self,
        method: str,
        url: str,
        repository: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str]]:
        token = self.registry.token(repository, "pull,push,delete")
        request = urllib.request.Request(
            url,
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
                return int(response.status), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as error:
            with error:
                detail = error.read().decode(errors="replace")
            raise RuntimeError(f"{method} {url}: HTTP {error.code} {detail}") from None

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        _, headers = self._send(
            "POST", f"{self.registry.url}/v2/{repository}/blobs/uploads/", repository, body=b""
        )
        location = urllib.parse.urljoin(self.registry.url, headers["location"])
        separator = "&" if "?" in location else "?"
        self._send(
            "PUT",
            f"{location}{separator}digest={urllib.parse.quote(digest)}",
            repository,
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return digest

    def push_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        self._send(
            "PUT",
            f"{self.registry.url}/v2/{repository}/manifests/{reference}",
            repository,
            body=data,
            headers={"Content-Type": media_type},
        )
        return sha256_digest(data)

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (and with it every tag naming it)."""
        self._send("DELETE", f"{self.registry.url}/v2/{repository}/manifests/{digest}", repository)

    def push_artifact(
        self,
        repository: str,
        subject: str,
        subject_media_type: str,
        subject_size: int,
        artifact_type: str,
        payload: bytes,
        *,
        tag: str | None = None,
    ) -> PushedArtifact:
        """An OCI 1.1 artifact about ``subject``: the empty config, one payload layer, an image
        manifest with ``artifactType`` and ``subject`` (indented: re-serializing changes it)."""
        self.push_blob(repository, EMPTY_JSON)
        layer = self.push_blob(repository, payload)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": {
                    "mediaType": OCI_EMPTY,
                    "digest": sha256_digest(EMPTY_JSON),
                    "size": len(EMPTY_JSON),
                },
                "layers": [
                    {
                        "mediaType": "application/octet-stream",
                        "digest": layer,
                        "size": len(payload),
                    }
                ],
                "subject": {
                    "mediaType": subject_media_type,
                    "digest": subject,
                    "size": subject_size,
                },
                "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
            },
            indent=3,
        ).encode()
        digest = self.push_manifest(
            repository, tag or sha256_digest(manifest), manifest, OCI_MANIFEST
        )
        return PushedArtifact(repository, digest, manifest, OCI_MANIFEST, artifact_type, subject)

    def push_referrers_tag(
        self, repository: str, subject: str, artifacts: list[PushedArtifact]
    ) -> bytes:
        """The referrers tag schema: an index of ``artifacts`` tagged ``sha256-<hex>``, as a
        client pushing to a registry without the referrers API maintains it."""
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [artifact.descriptor() for artifact in artifacts],
            },
            indent=2,
        ).encode()
        self.push_manifest(repository, subject.replace(":", "-"), index, OCI_INDEX)
        return index
