"""``registry-proxy warm``: fetch images into the cache ahead of the builds.

It runs on the same cache code as the server (``open_services``), so it is idempotent for free: a
tag inside its TTL costs nothing, after it one HEAD; a manifest or blob already cached is never
fetched again. Suitable for a schedule (cron, an ECS scheduled task on the same bucket).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import structlog

from proxy.config import Settings
from proxy.config_values import human_bytes
from proxy.registry.errors import RegistryError
from proxy.registry.manifest import INDEX_TYPES, platform_manifests, referenced_digests
from proxy.registry.reference import Digest, Reference, validate_name
from proxy.services import Services, open_services
from proxy.upstream.client import RegistryClient
from proxy.upstream.errors import UpstreamError

log = structlog.get_logger("proxy.warm")


@dataclass(slots=True)
class WarmResult:
    image: str
    manifests: int = 0
    blobs_fetched: int = 0
    blobs_cached: int = 0
    bytes_fetched: int = 0
    error: str | None = None
    platforms: list[str] = field(default_factory=list)


def parse_image(image: str) -> tuple[str, Reference]:
    """``golang:1.22``, ``ghcr.io/o/r@sha256:...``, ``alpine`` (``latest``) -> (name, reference)."""
    name, at, digest = image.partition("@")
    if at:
        return validate_name(name), Reference.parse(digest)
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return validate_name(name[:colon]), Reference.parse(name[colon + 1 :])
    return validate_name(name), Reference.parse("latest")


def read_image_list(path: Path) -> list[str]:
    """One image per line; blank lines and ``#`` comments ignored."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


class Progress:
    """A one-line progress bar per image on a terminal; plain log lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def update(self, image: str, done: int, total: int, fetched_bytes: int) -> None:
        if not self.tty:
            return
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r{image[:40]:40} [{bar}] {done}/{total} blobs, {human_bytes(fetched_bytes)} fetched"
        )
        self.stream.flush()

    def finish(self, result: WarmResult) -> None:
        if self.tty:
            self.stream.write("\n")
        log.info(
            "warm.image",
            image=result.image,
            platforms=result.platforms,
            manifests=result.manifests,
            blobs_fetched=result.blobs_fetched,
            blobs_already_cached=result.blobs_cached,
            bytes_fetched=result.bytes_fetched,
            error=result.error,
        )


async def warm_image(
    services: Services, image: str, platforms: set[str] | None, progress: Progress
) -> WarmResult:
    result = WarmResult(image)
    try:
        name, reference = parse_image(image)
        client, upstream_name = services.resolve(name, None)
        top = await services.manifests.get(client, upstream_name, reference)
        result.manifests += 1
        images = [top]
        if top.media_type in INDEX_TYPES:
            images = []
            # Attestation manifests are left out: no client pulls them, and each would cost a
            # counted pull.
            for entry in platform_manifests(top.data):
                if entry.is_attestation or (platforms is not None and entry.label not in platforms):
                    continue
                child = await services.manifests.by_digest(
                    client, upstream_name, Digest.parse(entry.digest)
                )
                result.manifests += 1
                result.platforms.append(entry.label)
                images.append(child)
        named = (d for m in images for d in referenced_digests(m.data, m.media_type)[1])
        blobs = list(dict.fromkeys(named))
        for index, blob in enumerate(blobs):
            await _warm_blob(services, client, upstream_name, Digest.parse(blob), result)
            progress.update(image, index + 1, len(blobs), result.bytes_fetched)
    except (RegistryError, UpstreamError) as exc:
        result.error = str(exc)
    progress.finish(result)
    return result


async def _warm_blob(
    services: Services, client: RegistryClient, name: str, digest: Digest, result: WarmResult
) -> None:
    content = await services.blobs.get(client, name, digest)
    if content.from_cache:
        result.blobs_cached += 1
        return
    # Following the shared download to its end is what makes it land in the cache.
    async for chunk in content.read(0, None):
        result.bytes_fetched += len(chunk)
    if content.settled is not None:
        await content.settled()  # the last bytes came once verified; the storing ends now
    result.blobs_fetched += 1


async def warm(
    settings: Settings, images: list[str], platforms: list[str] | None, stream: TextIO = sys.stderr
) -> int:
    """Warm every image; returns the number that failed."""
    progress = Progress(stream)
    wanted = set(platforms) if platforms else None
    failures = 0
    async with open_services(settings) as services:
        for image in images:
            result = await warm_image(services, image, wanted, progress)
            failures += result.error is not None
    return failures
