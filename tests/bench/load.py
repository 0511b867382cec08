"""A bounded load run against registry-proxy (``--only load``).

64 concurrent clients for 120 s on loopback against a ``registry-proxy serve`` process in front of
the fake Docker Hub (:mod:`support.fakehub`): cold pulls of new images (pairs of clients pull the
same new image at once) and warm pulls (HEAD by tag, GET by digest, blob GETs and HEADs), every
body verified.  Requests, errors (must be 0), latency percentiles, throughput, and the proxy's RSS
and open files sampled every 2 s.  A soak test: it finds errors and slow memory growth under a
realistic mix, which the side-by-side run's one-scenario-at-a-time figures do not.

Memory is judged in two phases, because two kinds of leak look different:

- the first half pulls new images (a tenth of the pulls) among warm ones. What the process keeps
  per new image (records of tags, manifests and links in bounded LRUs, the cache's inventory, the
  small-blob and manifest caches) grows by design until each bound, which two minutes do not
  reach. Must: beyond what ``/metrics`` says the in-memory caches hold, at most
  ``COLD_IMAGE_BUDGET`` per new image: an image's layer kept by mistake (256 KiB and up) fails it.
- the second half pulls only images already pulled: nothing new to remember, so memory must stay
  flat (at most ``WARM_GROWTH`` between the first and last thirds of the phase, over some 100 000
  requests): what a request leaves behind shows here.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from support.cache_scan import scan_directory
from support.fakehub import DOCKER_MANIFEST, FakeHub, ImageInfo
from support.proxy_process import ProxyProcess

from .capacity_watch import metric, scrape
from .procstat import MB, MiB, Sample, Sampler
from .text import table


def mb(value: float) -> float:
    return round(value / MB, 1)


@dataclass
class LoadConfig:
    clients: int = 64
    duration: float = 120.0
    sample_every: float = 2.0
    cold_fraction: float = 0.1
    # The last part of the run pulls only images pulled before (see the module's docstring).
    warm_only_fraction: float = 0.5
    tag_ttl: int = 30
    max_images: int = 3000
    repositories: int = 8
    seed: int = 64
    request_timeout: float = 60.0


class Catalog:
    """Images of the fake hub: made when first pulled (cold), pulled again once ready (warm).

    Cold tickets are handed out in pairs: two clients pull each new image, usually at the same
    time, as two builds starting together would.
    """

    def __init__(self, hub: FakeHub, config: LoadConfig) -> None:
        self.hub = hub
        self.config = config
        self.images: list[ImageInfo] = []
        self.ready: list[ImageInfo] = []
        self._ready_digests: set[str] = set()
        self._tickets = 0
        base = random.Random(config.seed)
        self.bases = {
            f"bench/app{i}": base.randbytes(base.randint(256 * 1024, 1024 * 1024))
            for i in range(config.repositories)
        }

    def cold(self) -> ImageInfo | None:
        index = self._tickets // 2
        if index >= self.config.max_images:
            return None
        self._tickets += 1
        while len(self.images) <= index:
            self.images.append(self._create(len(self.images)))
        return self.images[index]

    @property
    def cold_images(self) -> int:
        return (self._tickets + 1) // 2

    def mark_ready(self, image: ImageInfo) -> None:
        if image.digest not in self._ready_digests:
            self._ready_digests.add(image.digest)
            self.ready.append(image)

    def _create(self, index: int) -> ImageInfo:
        rng = random.Random(self.config.seed * 1_000_003 + index)
        repo = f"bench/app{index % self.config.repositories}"
        layers = [self.bases[repo]]
        for _ in range(rng.randint(1, 3)):
            draw = rng.random()
            if draw < 0.70:
                size = rng.randint(2 * 1024, 64 * 1024)
            elif draw < 0.97:
                size = rng.randint(64 * 1024, 1024 * 1024)
            else:
                size = rng.randint(1024 * 1024, 4 * 1024 * 1024)
            layers.append(rng.randbytes(size))
        return self.hub.add_image(repo, f"v{index}", layers)


@dataclass
class LoadStats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    body_bytes: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def fail(self, kind: str, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{kind}: {message}"[:500])

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + self.errors


class LoadClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        catalog: Catalog,
        stats: LoadStats,
        rng: random.Random,
    ) -> None:
        self.session = session
        self.base = base_url
        self.catalog = catalog
        self.stats = stats
        self.rng = rng

    async def _request(
        self, kind: str, method: str, path: str, *, accept: bool = False, expect: str | None = None
    ) -> str | None:
        """One request; verify status, digest header and (GET) the body's sha256.

        Returns the Docker-Content-Digest, or None after recording an error.
        """
        headers = {"Accept": DOCKER_MANIFEST} if accept else {}
        started = time.monotonic()
        try:
            async with self.session.request(method, self.base + path, headers=headers) as response:
                digest = hashlib.sha256()
                size = 0
                async for chunk in response.content.iter_chunked(256 * 1024):
                    digest.update(chunk)
                    size += len(chunk)
                status = response.status
                header = response.headers.get("Docker-Content-Digest")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.fail(kind, f"{method} {path}: {exc!r}")
            return None
        elapsed = time.monotonic() - started
        if status != 200:
            self.stats.fail(kind, f"{method} {path}: HTTP {status}")
            return None
        if expect is not None and header != expect:
            self.stats.fail(kind, f"{method} {path}: digest header {header} != {expect}")
            return None
        if method == "GET" and expect is not None and "sha256:" + digest.hexdigest() != expect:
            self.stats.fail(kind, f"{method} {path}: body hashes to sha256:{digest.hexdigest()}")
            return None
        self.stats.latencies[kind].append(elapsed)
        self.stats.body_bytes += size
        return header

    async def cold_pull(self, image: ImageInfo) -> None:
        await self._request(
            "manifest GET cold",
            "GET",
            f"/v2/{image.repo}/manifests/{image.tag}",
            accept=True,
            expect=image.digest,
        )
        for digest in image.blob_digests:
            await self._request(
                "blob GET cold", "GET", f"/v2/{image.repo}/blobs/{digest}", expect=digest
            )
        self.catalog.mark_ready(image)

    async def warm_pull(self, image: ImageInfo) -> None:
        # What a Docker daemon does: HEAD the tag, GET the manifest by digest, then the blobs.
        await self._request(
            "manifest HEAD",
            "HEAD",
            f"/v2/{image.repo}/manifests/{image.tag}",
            accept=True,
            expect=image.digest,
        )
        await self._request(
            "manifest GET warm",
            "GET",
            f"/v2/{image.repo}/manifests/{image.digest}",
            accept=True,
            expect=image.digest,
        )
        for digest in image.blob_digests:
            path = f"/v2/{image.repo}/blobs/{digest}"
            if self.rng.random() < 0.25:
                await self._request("blob HEAD", "HEAD", path, expect=digest)
            await self._request("blob GET warm", "GET", path, expect=digest)

    async def run(self, deadline: float, cold_until: float, cold_fraction: float) -> None:
        while (now := time.monotonic()) < deadline:
            image = None
            if not self.catalog.ready or (now < cold_until and self.rng.random() < cold_fraction):
                image = self.catalog.cold()
            if image is not None:
                await self.cold_pull(image)
            else:
                await self.warm_pull(self.rng.choice(self.catalog.ready))


def percentile(values: Sequence[float], p: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# Must: RSS beyond the in-memory caches grows at most this much per new image (first phase) ...
COLD_IMAGE_BUDGET = 32 * 1024
# ... and at most this much between the first and last thirds of the warm-only phase.
WARM_GROWTH = 8 * MiB


def memory_phases(
    samples: Sequence[Sample], cold_until: float, cold_images: int, settle: float
) -> dict[str, Any]:
    """The two memory rules of the module's docstring, on RSS beyond what the caches hold.

    ``cold_until``: seconds into the run when new images stopped; ``settle``: seconds skipped at
    the start of each phase (the first requests, the last cold pulls finishing).
    """
    cold = [s for s in samples if settle <= s.at < cold_until] or list(samples[:2])
    warm = [s for s in samples if s.at >= cold_until + settle] or list(samples[-2:])
    per_image = (cold[-1].beyond_held - cold[0].beyond_held) / max(1, cold_images)
    third = max(1, len(warm) // 3)
    first = max(s.beyond_held for s in warm[:third])
    last = max(s.beyond_held for s in warm[-third:])
    return {
        "cold_phase_beyond_held_mb": [mb(cold[0].beyond_held), mb(cold[-1].beyond_held)],
        "cold_phase_held_mb": [mb(cold[0].held), mb(cold[-1].held)],
        "kb_per_cold_image_beyond_held": round(per_image / 1024, 1),
        "cold_within_budget": per_image <= COLD_IMAGE_BUDGET,
        "warm_first_third_max_mb": mb(first),
        "warm_last_third_max_mb": mb(last),
        "warm_growth_mb": mb(last - first),
        "warm_flat": last - first <= WARM_GROWTH,
    }


MEMORY_CACHE_METRIC = "registry_proxy_memory_cache_bytes"


async def held_bytes(url: str) -> int:
    """What ``/metrics`` says the bounded in-memory caches hold, all caches together (read in a
    worker thread: the load's clients share this event loop)."""
    return int(metric(await asyncio.to_thread(scrape, url), MEMORY_CACHE_METRIC))


async def load_section(config: LoadConfig, workdir: Path) -> dict[str, Any]:
    async with FakeHub(rate_limit=None) as hub:
        catalog = Catalog(hub, config)
        proxy = ProxyProcess(
            workdir / "load",
            hub.url,
            extra_env={"PROXY_TAG_TTL": str(config.tag_ttl), "PROXY_LOG_LEVEL": "info"},
        )
        await asyncio.to_thread(proxy.start)
        assert proxy.pid is not None
        pid = proxy.pid
        stats = LoadStats()
        try:
            connector = aiohttp.TCPConnector(limit=config.clients, force_close=False)
            timeout = aiohttp.ClientTimeout(total=config.request_timeout)
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            ) as session:
                sampler = Sampler(pid, config.sample_every, lambda: held_bytes(proxy.url))
                sampler.start()
                started = time.monotonic()
                deadline = started + config.duration
                cold_until = deadline - config.duration * config.warm_only_fraction
                clients = [
                    LoadClient(session, proxy.url, catalog, stats, random.Random(config.seed + i))
                    for i in range(config.clients)
                ]
                async with asyncio.timeout(config.duration + 2 * config.request_timeout):
                    await asyncio.gather(
                        *(c.run(deadline, cold_until, config.cold_fraction) for c in clients)
                    )
                elapsed = time.monotonic() - started
                await sampler.stop()
        finally:
            await asyncio.to_thread(proxy.stop)
        scan = await asyncio.to_thread(scan_directory, workdir / "load" / "cache")

        # Auth challenges (401 before the token dance) are not requests for content.
        upstream = Counter(
            f"{r.server} {r.method} {r.kind}"
            for r in hub.requests
            if r.kind != "other" and r.status != 401
        )
        challenges = sum(1 for r in hub.requests if r.status == 401)
        cdn_gets = Counter(r.ref for r in hub.requests if r.server == "cdn" and r.method == "GET")
    shutil.rmtree(workdir / "load", ignore_errors=True)

    kinds = {
        kind: {
            "count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
        }
        for kind, values in sorted(stats.latencies.items())
    }
    every = [v for values in stats.latencies.values() for v in values]
    samples = sampler.samples
    return {
        "clients": config.clients,
        "duration_s": round(elapsed, 1),
        "requests": stats.requests,
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "requests_per_s": round(stats.requests / elapsed, 1),
        "mb_per_s": round(stats.body_bytes / MB / elapsed, 1),
        "body_mb": mb(stats.body_bytes),
        "p50_ms": round(percentile(every, 50) * 1000, 2),
        "p99_ms": round(percentile(every, 99) * 1000, 2),
        "by_kind": kinds,
        "cold_images": catalog.cold_images,
        "upstream": dict(sorted(upstream.items())),
        "upstream_auth_challenges": challenges,
        "upstream_blob_downloads_beyond_one_per_digest": sum(n - 1 for n in cdn_gets.values()),
        "rss_samples_mb": [mb(s.rss) for s in samples],
        "rss_start_mb": mb(samples[0].rss),
        "rss_max_mb": mb(max(s.rss for s in samples)),
        "rss_end_mb": mb(samples[-1].rss),
        "open_files_start": samples[0].fds,
        "open_files_max": max(s.fds for s in samples),
        "open_files_end": samples[-1].fds,
        "memory": memory_phases(
            samples,
            config.duration * (1 - config.warm_only_fraction),
            catalog.cold_images,
            settle=min(10.0, config.duration / 12),
        ),
        "held_samples_mb": [mb(s.held) for s in samples],
        "held_end_mb": mb(samples[-1].held),
        "cache_entries": scan.entries,
        "cache_problems": len(scan.problems),
    }


def report(load: dict[str, Any]) -> list[str]:
    """Print the figures; return the failed "musts"."""
    failed: list[str] = []
    if load["errors"]:
        failed.append(f"load: {load['errors']} errors: {load['error_samples'][:3]}")
    m = load["memory"]
    if not m["cold_within_budget"]:
        failed.append(
            f"load: RSS beyond the in-memory caches grew {m['kb_per_cold_image_beyond_held']} kB "
            f"per new image (at most {COLD_IMAGE_BUDGET // 1024})"
        )
    if not m["warm_flat"]:
        failed.append(
            f"load: RSS beyond the in-memory caches grew {m['warm_growth_mb']} MB while only "
            f"images pulled before were pulled (at most {WARM_GROWTH / MB:.1f} MB)"
        )
    if load["cache_problems"]:
        failed.append(f"load: {load['cache_problems']} cache entries do not verify")
    print(
        f"\nLoad: {load['clients']} clients for {load['duration_s']} s: "
        f"{load['requests']} requests, {load['errors']} errors, "
        f"{load['requests_per_s']} req/s, {load['mb_per_s']} MB/s, "
        f"p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
        f"{load['cold_images']} cold images"
    )
    print(
        table(
            ["request", "count", "p50 ms", "p99 ms"],
            [[k, v["count"], v["p50_ms"], v["p99_ms"]] for k, v in load["by_kind"].items()],
        )
    )
    print(
        f"RSS MB: start {load['rss_start_mb']}, max {load['rss_max_mb']}, end "
        f"{load['rss_end_mb']}, of which the in-memory caches {load['held_end_mb']} at the end; "
        f"open files {load['open_files_start']} -> {load['open_files_end']} "
        f"(max {load['open_files_max']})\n"
        f"new images and warm pulls: beyond the caches {m['cold_phase_beyond_held_mb'][0]} -> "
        f"{m['cold_phase_beyond_held_mb'][1]} MB (caches {m['cold_phase_held_mb'][0]} -> "
        f"{m['cold_phase_held_mb'][1]}), {m['kb_per_cold_image_beyond_held']} kB per new image "
        f"(within budget: {m['cold_within_budget']})\n"
        f"warm pulls only: beyond the caches, first third max {m['warm_first_third_max_mb']}, "
        f"last third max {m['warm_last_third_max_mb']} MB (flat: {m['warm_flat']})"
    )
    print(
        f"upstream: {load['upstream']}; extra blob downloads: "
        f"{load['upstream_blob_downloads_beyond_one_per_digest']}"
    )
    return failed
