"""registry-proxy benchmarks: memory while streaming, a bounded load run, skopeo pulls.

Run from the repository root (``make bench``)::

    python -m tests.bench.run [--quick] [--only memory,load,pulls] [--blob-mb 500]
                              [--clients 64] [--duration 120] [--keep]

Sections:

memory  Peak RSS (``VmHWM``) of a ``registry-proxy serve`` process while a 500 MB blob streams
        from an upstream through it into the cache and to a client, then once more from the
        cache; for filesystem storage and for S3 on a moto server. The blob is generated from a
        seeded PRNG one chunk at a time, so neither the upstream nor the client holds it.
load    64 concurrent clients for 120 s on loopback against a proxy process in front of the fake
        Docker Hub (tests/support/fakehub.py): cold pulls of new images (pairs of clients pull
        the same new image at once) and warm pulls (HEAD by tag, GET by digest, blob GETs and
        HEADs), every body verified. Requests, errors (must be 0), latency percentiles,
        throughput, the proxy's RSS and open files sampled every 2 s (must stay flat).
pulls   skopeo through the proxy from distribution with token auth (the e2e harness), cold,
        warm and 8 concurrent cold pulls of a 212 MB image, on plain loopback and through a
        relay that adds 40 ms round trip and paces each connection to 25 MB/s, with the
        upstream traffic counted from distribution's access log: the scenarios of the
        distribution baseline in /work/shared/TESTBED.md.

``--quick``: a 15 s load run, a 100 MB blob and no slow-relay scenarios.

Results are printed as tables and written to ``.bench/bench-<UTC time>.json`` and
``.bench/latest.json``. The exit status is 1 when a "must" failed (an error in the load run, a
blob that did not verify, memory that grew).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from support.binaries import missing_binaries
from support.cache_scan import scan_directory
from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution
from support.fakehub import DOCKER_MANIFEST, FakeHub, ImageInfo
from support.moto import CLEARED_VARIABLES, CREDENTIALS, MotoServer
from support.oci_image import (
    AMD64,
    PushedImage,
    Skopeo,
    build_oci_layout,
    push_image,
    verify_dir_copy,
)
from support.proxy_process import ProxyProcess
from support.token_server import TokenServer

MB = 1_000_000
MiB = 1024 * 1024
CHUNK = MiB
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / ".bench"
HUB_USER = "hubuser"
HUB_PASSWORD = "hubtoken"

# The distribution 2.8.2 proxy-mode baseline measured on this kind of machine (TESTBED.md).
BASELINE: dict[str, dict[str, tuple[float, float | None]]] = {
    "fast": {"cold": (1.48, 424.0), "warm": (1.12, 0.0), "concurrent": (10.2, None)},
    "slow": {
        "direct": (11.9, 212.0),
        "cold": (12.0, 424.0),
        "warm": (1.26, 0.0),
        "concurrent": (13.3, 1871.0),
    },
}


# --------------------------------------------------------------------- the process under test


def proc_status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of /proc/PID/status, in bytes (VmRSS, VmHWM = peak RSS, ...)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") and rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    at: float
    rss: int
    fds: int


class Sampler:
    """Samples a process's RSS and open file count every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    def sample(self) -> None:
        self.samples.append(
            Sample(
                time.monotonic() - self._started,
                proc_status(self.pid)["VmRSS"],
                open_files(self.pid),
            )
        )

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()


async def start_proxy(proxy: ProxyProcess) -> int:
    """Start the proxy without blocking the event loop (the upstream may live in it)."""
    await asyncio.to_thread(proxy.start)
    assert proxy.pid is not None
    return proxy.pid


def mb(value: float) -> float:
    return round(value / MB, 1)


# --------------------------------------------------------------------- (a) memory while streaming


def generated_chunks(seed: int, size: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


@dataclass(frozen=True)
class SyntheticBlob:
    """A blob that exists only as a seed and a size; its bytes are made as they are sent."""

    seed: int
    size: int
    digest: str

    @classmethod
    def make(cls, seed: int, size: int) -> SyntheticBlob:
        digest = hashlib.sha256()
        for chunk in generated_chunks(seed, size):
            digest.update(chunk)
        return cls(seed, size, "sha256:" + digest.hexdigest())


class StreamingUpstream:
    """A registry holding nothing but synthetic blobs, streamed as generated; no auth."""

    def __init__(self, blobs: Sequence[SyntheticBlob]) -> None:
        self.blobs = {blob.digest: blob for blob in blobs}
        self.gets = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> StreamingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in ("/v2", "/v2/"):
            return web.json_response({})
        _, marker, digest = request.path.rpartition("/blobs/")
        blob = self.blobs.get(digest) if marker else None
        if blob is None or request.method not in ("GET", "HEAD"):
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        response = web.StreamResponse(
            headers={"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        )
        response.content_length = blob.size
        await response.prepare(request)
        if request.method == "GET":
            self.gets += 1
            for chunk in generated_chunks(blob.seed, blob.size):
                await response.write(chunk)
        await response.write_eof()
        return response


async def fetch_blob(session: aiohttp.ClientSession, url: str) -> tuple[float, int, str]:
    """GET a blob, hashing it as it streams: (seconds, bytes, sha256 digest)."""
    started = time.monotonic()
    digest = hashlib.sha256()
    size = 0
    async with session.get(url) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_chunked(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return time.monotonic() - started, size, "sha256:" + digest.hexdigest()


async def memory_run(
    storage: str, blob: SyntheticBlob, workdir: Path, moto: MotoServer | None
) -> dict[str, Any]:
    extra_env: dict[str, str] = {"PROXY_LOG_LEVEL": "info"}
    bucket = ""
    if storage == "s3":
        assert moto is not None
        bucket = moto.create_bucket()
        extra_env.update(
            {
                **CREDENTIALS,
                "AWS_EC2_METADATA_DISABLED": "true",
                "PROXY_STORAGE": f"s3://{bucket}/cache",
                "PROXY_S3_ENDPOINT_URL": moto.endpoint_url,
                "PROXY_SPOOL_DIR": str(workdir / "spool"),
            }
        )
    async with StreamingUpstream([blob]) as upstream:
        proxy = ProxyProcess(workdir, upstream.url, extra_env=extra_env)
        pid = await start_proxy(proxy)
        try:
            timeout = aiohttp.ClientTimeout(total=900, sock_read=120)
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
                url = f"{proxy.url}/v2/library/big/blobs/{blob.digest}"
                idle = proc_status(pid)
                sampler = Sampler(pid, 0.25)
                sampler.start()
                cold_s, cold_size, cold_digest = await fetch_blob(session, url)
                after_cold = proc_status(pid)
                warm_s, warm_size, warm_digest = await fetch_blob(session, url)
                await sampler.stop()
                after_warm = proc_status(pid)
        finally:
            await asyncio.to_thread(proxy.stop)
    hex_digest = blob.digest.removeprefix("sha256:")
    if storage == "s3":
        assert moto is not None
        head = moto.client().head_object(
            Bucket=bucket, Key=f"cache/blobs/sha256/{hex_digest[:2]}/{hex_digest}"
        )
        stored = int(head["ContentLength"])
    else:
        stored = (workdir / "cache/data/blobs/sha256" / hex_digest[:2] / hex_digest).stat().st_size
    verified = (
        cold_digest == warm_digest == blob.digest
        and cold_size == warm_size == stored == blob.size
        and upstream.gets == 1
    )
    return {
        "storage": storage,
        "blob_mb": mb(blob.size),
        "idle_rss_mb": mb(idle["VmRSS"]),
        "peak_rss_cold_mb": mb(after_cold["VmHWM"]),
        "peak_rss_warm_mb": mb(after_warm["VmHWM"]),
        "max_sampled_rss_mb": mb(max(s.rss for s in sampler.samples)),
        "peak_growth_mb": mb(after_warm["VmHWM"] - idle["VmRSS"]),
        "growth_over_blob": round((after_warm["VmHWM"] - idle["VmRSS"]) / blob.size, 3),
        "cold_seconds": round(cold_s, 2),
        "cold_mb_per_s": round(blob.size / MB / cold_s, 1),
        "warm_seconds": round(warm_s, 2),
        "warm_mb_per_s": round(blob.size / MB / warm_s, 1),
        "upstream_gets": upstream.gets,
        "verified": verified,
    }


async def memory_section(blob_mb: int, workdir: Path) -> list[dict[str, Any]]:
    size = blob_mb * MB
    print(f"memory: generating the digest of a {blob_mb} MB synthetic blob ...", flush=True)
    blob = await asyncio.to_thread(SyntheticBlob.make, 500, size)
    results = [await memory_run("filesystem", blob, workdir / "memory-fs", None)]
    print(f"memory: filesystem done: {results[-1]}", flush=True)
    shutil.rmtree(workdir / "memory-fs", ignore_errors=True)
    try:
        with MotoServer(workdir=workdir / "moto") as moto:
            results.append(await memory_run("s3", blob, workdir / "memory-s3", moto))
            print(f"memory: s3 done: {results[-1]}", flush=True)
    except Exception as exc:  # moto missing or broken: report, keep the other figures
        print(f"memory: S3 run skipped: {exc!r}", flush=True)
    shutil.rmtree(workdir / "memory-s3", ignore_errors=True)
    return results


# --------------------------------------------------------------------- (b) bounded load run


@dataclass
class LoadConfig:
    clients: int = 64
    duration: float = 120.0
    sample_every: float = 2.0
    cold_fraction: float = 0.1
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

    async def run(self, deadline: float, cold_fraction: float) -> None:
        while time.monotonic() < deadline:
            image = None
            if not self.catalog.ready or self.rng.random() < cold_fraction:
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


def flatness(samples: Sequence[Sample], warmup: float) -> dict[str, Any]:
    """Compare the RSS of the first and last thirds of the run after ``warmup`` seconds."""
    steady = [s for s in samples if s.at >= warmup] or list(samples)
    third = max(1, len(steady) // 3)
    first = max(s.rss for s in steady[:third])
    last = max(s.rss for s in steady[-third:])
    growth = last - first
    return {
        "first_third_max_mb": mb(first),
        "last_third_max_mb": mb(last),
        "growth_mb": mb(growth),
        "flat": growth < max(16 * MiB, first // 10),
    }


async def load_section(config: LoadConfig, workdir: Path) -> dict[str, Any]:
    async with FakeHub(rate_limit=None) as hub:
        catalog = Catalog(hub, config)
        proxy = ProxyProcess(
            workdir / "load",
            hub.url,
            extra_env={"PROXY_TAG_TTL": str(config.tag_ttl), "PROXY_LOG_LEVEL": "info"},
        )
        pid = await start_proxy(proxy)
        stats = LoadStats()
        sampler = Sampler(pid, config.sample_every)
        try:
            connector = aiohttp.TCPConnector(limit=config.clients, force_close=False)
            timeout = aiohttp.ClientTimeout(total=config.request_timeout)
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            ) as session:
                sampler.start()
                started = time.monotonic()
                deadline = started + config.duration
                clients = [
                    LoadClient(session, proxy.url, catalog, stats, random.Random(config.seed + i))
                    for i in range(config.clients)
                ]
                async with asyncio.timeout(config.duration + 2 * config.request_timeout):
                    await asyncio.gather(*(c.run(deadline, config.cold_fraction) for c in clients))
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
        "memory": flatness(samples, warmup=min(20.0, config.duration / 5)),
        "rss_growth_kb_per_cold_image": round(
            (samples[-1].rss - samples[1 if len(samples) > 1 else 0].rss)
            / 1024
            / max(1, catalog.cold_images),
            1,
        ),
        "cache_entries": scan.entries,
        "cache_problems": len(scan.problems),
    }


# --------------------------------------------------------------------- (c) skopeo pulls


class Relay:
    """A TCP relay on 127.0.0.1 that delays every chunk ``one_way`` seconds in each direction
    and paces the upstream-to-client direction of each connection to ``rate`` bytes/s."""

    def __init__(self, target_host: str, target_port: int, *, rate: float, one_way: float) -> None:
        self.target = (target_host, target_port)
        self.rate = rate
        self.one_way = one_way
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> Relay:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="relay", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, pace=False), self._pipe(up_reader, writer, pace=True)
        )

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, pace: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=32)

        async def take_in() -> None:
            try:
                while chunk := await source.read(64 * 1024):
                    await queue.put((loop.time(), chunk))
            except OSError:
                pass
            finally:
                await queue.put(None)

        reading = asyncio.create_task(take_in())
        free_at = 0.0
        try:
            while (item := await queue.get()) is not None:
                arrived, chunk = item
                send_at = max(arrived + self.one_way, free_at if pace else 0.0)
                if pace:
                    free_at = send_at + len(chunk) / self.rate
                await asyncio.sleep(max(0.0, send_at - loop.time()))
                sink.write(chunk)
                await sink.drain()
        except OSError:
            pass
        finally:
            reading.cancel()
            sink.close()


@dataclass
class PullFigures:
    scenario: str
    pulls: int
    wall_s: float
    upstream_mb: float
    blob_gets: int
    manifest_gets: int
    manifest_heads: int
    token_requests: int


def pull_scenario(
    name: str,
    skopeo: Skopeo,
    upstream: Distribution,
    tokens: TokenServer,
    reference: str,
    outdir: Path,
    image: PushedImage,
    *,
    pulls: int = 1,
    creds: str | None = None,
) -> PullFigures:
    outs = [outdir / f"{name}-{i}" for i in range(pulls)]
    mark = upstream.mark()
    token_mark = tokens.count()
    started = time.monotonic()
    results = skopeo.run_many(
        [skopeo.copy_args_to_dir(reference, out, creds=creds) for out in outs], timeout=600
    )
    wall = time.monotonic() - started
    for result in results:
        if result.returncode != 0:
            raise RuntimeError(f"{name}: skopeo failed: {result.stdout.decode()[-2000:]}")
    for out in outs:
        verify_dir_copy(out, image)
        shutil.rmtree(out)
    upstream.sync()
    entries = upstream.entries(since=mark)
    return PullFigures(
        scenario=name,
        pulls=pulls,
        wall_s=round(wall, 2),
        upstream_mb=mb(sum(e.size for e in entries if e.method == "GET")),
        blob_gets=upstream.count("GET", BLOB_PATH, since=mark),
        manifest_gets=upstream.count("GET", MANIFEST_PATH, since=mark),
        manifest_heads=upstream.count("HEAD", MANIFEST_PATH, since=mark),
        token_requests=tokens.count() - token_mark,
    )


def pulls_section(workdir: Path, *, slow: bool) -> dict[str, Any]:
    missing = missing_binaries("docker-registry", "skopeo")
    if missing:
        return {"skipped": f"missing programs: {', '.join(missing)}"}
    tokens = TokenServer(workdir / "token", {HUB_USER: HUB_PASSWORD})
    tokens.start()
    upstream = Distribution(workdir / "upstream", tokens)
    upstream.start()
    proxies: list[ProxyProcess] = []
    try:
        skopeo = Skopeo(workdir / "skopeo")
        print("pulls: building and pushing a 212 MB single-platform image ...", flush=True)
        layout = build_oci_layout(
            workdir / "layout",
            tags=("latest",),
            seed=212,
            base_layer_size=140 * MiB,
            platform_layer_sizes=(50 * MiB, 12 * MiB),
            platforms=(AMD64,),
        )
        image = push_image(
            skopeo,
            layout,
            upstream.host,
            "library/golang",
            "bench",
            username=HUB_USER,
            password=HUB_PASSWORD,
        )
        shutil.rmtree(workdir / "layout")
        creds = f"{HUB_USER}:{HUB_PASSWORD}"
        outdir = workdir / "pulls"
        outdir.mkdir()

        def new_proxy(upstream_url: str, label: str) -> ProxyProcess:
            proxy = ProxyProcess(
                workdir / f"proxy-{label}-{len(proxies)}",
                upstream_url,
                username=HUB_USER,
                password=HUB_PASSWORD,
            )
            proxies.append(proxy)
            proxy.start()
            return proxy

        def scenarios(label: str, upstream_url: str, direct_host: str) -> list[PullFigures]:
            ref = "library/golang:bench"
            figures = [
                pull_scenario(
                    "direct",
                    skopeo,
                    upstream,
                    tokens,
                    f"{direct_host}/{ref}",
                    outdir,
                    image,
                    creds=creds,
                )
            ]
            proxy = new_proxy(upstream_url, label)
            for name in ("cold", "warm"):
                figures.append(
                    pull_scenario(
                        name, skopeo, upstream, tokens, f"{proxy.host}/{ref}", outdir, image
                    )
                )
            proxy.stop()
            fresh = new_proxy(upstream_url, label)
            figures.append(
                pull_scenario(
                    "concurrent",
                    skopeo,
                    upstream,
                    tokens,
                    f"{fresh.host}/{ref}",
                    outdir,
                    image,
                    pulls=8,
                )
            )
            fresh.stop()
            for proxy in proxies:
                shutil.rmtree(proxy.workdir, ignore_errors=True)
            return figures

        print("pulls: loopback ...", flush=True)
        result: dict[str, Any] = {
            "image_mb": mb(layout.total_size),
            "fast": [vars(f) for f in scenarios("fast", upstream.url, upstream.host)],
        }
        if slow:
            print("pulls: through the slow relay (40 ms, 25 MB/s per connection) ...", flush=True)
            with Relay("127.0.0.1", upstream.port, rate=25 * MB, one_way=0.02) as relay:
                result["slow"] = [vars(f) for f in scenarios("slow", relay.url, relay.host)]
        return result
    finally:
        for proxy in proxies:
            proxy.stop()
        upstream.stop()
        tokens.stop()


# --------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    versions = {}
    for program, flag in (("docker-registry", "--version"), ("skopeo", "--version")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([program, flag], capture_output=True, timeout=10, check=False)
            versions[program] = out.stdout.decode().strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        **versions,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(results: dict[str, Any]) -> list[str]:
    """Print the tables; return the list of failed "musts"."""
    failed: list[str] = []
    for run in results.get("memory", []):
        if not run["verified"]:
            failed.append(f"memory/{run['storage']}: the blob did not verify")
    if "memory" in results:
        print("\n(a) peak RSS while streaming one blob through the proxy")
        print(
            table(
                [
                    "storage",
                    "blob MB",
                    "idle RSS",
                    "peak cold",
                    "peak warm",
                    "growth/blob",
                    "cold MB/s",
                    "warm MB/s",
                    "ok",
                ],
                [
                    [
                        r["storage"],
                        r["blob_mb"],
                        r["idle_rss_mb"],
                        r["peak_rss_cold_mb"],
                        r["peak_rss_warm_mb"],
                        r["growth_over_blob"],
                        r["cold_mb_per_s"],
                        r["warm_mb_per_s"],
                        r["verified"],
                    ]
                    for r in results["memory"]
                ],
            )
        )
    load = results.get("load")
    if load:
        if load["errors"]:
            failed.append(f"load: {load['errors']} errors: {load['error_samples'][:3]}")
        if not load["memory"]["flat"]:
            failed.append(f"load: RSS grew {load['memory']['growth_mb']} MB")
        if load["cache_problems"]:
            failed.append(f"load: {load['cache_problems']} cache entries do not verify")
        print(
            f"\n(b) load: {load['clients']} clients for {load['duration_s']} s: "
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
        m = load["memory"]
        print(
            f"RSS MB: start {load['rss_start_mb']}, max {load['rss_max_mb']}, end "
            f"{load['rss_end_mb']}; first third max {m['first_third_max_mb']}, last third max "
            f"{m['last_third_max_mb']} (flat: {m['flat']}); open files "
            f"{load['open_files_start']} -> {load['open_files_end']} "
            f"(max {load['open_files_max']}); "
            f"{load['rss_growth_kb_per_cold_image']} kB per cold image"
        )
        print(
            f"upstream: {load['upstream']}; extra blob downloads: "
            f"{load['upstream_blob_downloads_beyond_one_per_digest']}"
        )
    pulls = results.get("pulls")
    if pulls and "skipped" not in pulls:
        print(f"\n(c) skopeo pulls of a {pulls['image_mb']} MB image from distribution")
        rows = []
        for label in ("fast", "slow"):
            for f in pulls.get(label, []):
                base = BASELINE[label].get(f["scenario"])
                rows.append(
                    [
                        label,
                        f["scenario"],
                        f["pulls"],
                        f["wall_s"],
                        f["upstream_mb"],
                        f["blob_gets"],
                        f["manifest_gets"],
                        f["manifest_heads"],
                        f["token_requests"],
                        f"{base[0]} s / {base[1] if base[1] is not None else '?'} MB"
                        if base
                        else "",
                    ]
                )
        print(
            table(
                [
                    "upstream",
                    "scenario",
                    "pulls",
                    "wall s",
                    "upstream MB",
                    "blob GETs",
                    "manifest GETs",
                    "HEADs",
                    "tokens",
                    "distribution proxy (TESTBED)",
                ],
                rows,
            )
        )
    elif pulls:
        print(f"\n(c) skopeo pulls skipped: {pulls['skipped']}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="15 s load, 100 MB blob, no relay")
    parser.add_argument("--only", default="memory,load,pulls", help="sections, comma-separated")
    parser.add_argument("--blob-mb", type=int, default=None, help="blob size (default 500)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=None, help="load seconds (default 120)")
    parser.add_argument(
        "--max-images", type=int, default=3000, help="new images the load run may create"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"memory", "load", "pulls"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    for name in CLEARED_VARIABLES:  # the proxies must see only moto's fake credentials
        os.environ.pop(name, None)
    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-bench-"))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
    }
    try:
        if "memory" in sections:
            blob_mb = args.blob_mb or (100 if args.quick else 500)
            results["memory"] = asyncio.run(memory_section(blob_mb, workdir))
        if "load" in sections:
            config = LoadConfig(
                clients=args.clients,
                duration=args.duration or (15.0 if args.quick else 120.0),
                sample_every=1.0 if args.quick else 2.0,
                max_images=args.max_images,
            )
            print(f"load: {config.clients} clients for {config.duration} s ...", flush=True)
            results["load"] = asyncio.run(load_section(config, workdir))
        if "pulls" in sections:
            results["pulls"] = pulls_section(workdir, slow=not args.quick)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2)
    (RESULTS_DIR / f"bench-{stamp}.json").write_text(text)
    (RESULTS_DIR / "latest.json").write_text(text)
    failed = report(results)
    print(f"\nresults: {RESULTS_DIR / f'bench-{stamp}.json'}")
    for failure in failed:
        print(f"FAILED: {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
