"""The side-by-side run (``make bench``): registry-proxy against distribution's proxy mode, the
bare aiohttp server and the direct pull, on one machine, alternating, round after round.

Every round starts fresh servers and runs the servers of each scenario one after the other, in an
order that rotates from round to round, so that a disturbance of the machine (a neighbour's test
run, a page-cache flush) does not always hit the same server.  One server runs at a time wherever
a figure depends on CPU; the servers of the warm scenarios stay up side by side but idle while
another is measured.  The summary is the median over the rounds.

Sections (``--only``; all but ``memory`` and ``load`` by default):

pulls       cold pull with skopeo through each proxy (empty cache) and straight from the upstream
            through the WAN; then the warm pull through each proxy and from the bare server.
concurrent  8 skopeo processes pull the same image at once through a fresh proxy: wall time,
            upstream bytes per image, peak RSS; then the same 8 pulls again, warm (the floor).
docker      the Docker daemon pulls the image through its registry mirror: registry-proxy,
            distribution, or a relay straight to the upstream (the direct pull).
manifests   warm manifest HEAD and GET, by tag and by digest: ``ab -k -c 32``, requests/s, p50,
            p99.  distribution asks the upstream on every request by tag.
blobs       warm GETs of the biggest blob from the local directory (4 curl clients x 4 GETs).
s3          the same from S3 on moto: bytes through the server, and answered with a redirect to a
            presigned S3 URL (``PROXY_BLOB_REDIRECT``; distribution redirects by default).
idle        1 000 clients that ask for the biggest blob and then read nothing: peak RSS.
headers     300 clients that each send 1 MB of headers that never end: peak RSS, and RSS once
            they left.
ttl         the manifest requests of 100 warm pulls, once the tag's TTL has passed: upstream
            manifest GETs (what Docker Hub counts as pulls) and HEADs.
eviction    a cache sweep over 10 000 blobs, hits/s with access recording on and off.
"""

from __future__ import annotations

import shutil
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from support.binaries import missing_binaries, wait_for
from support.moto import CREDENTIALS, MotoServer
from support.oci_image import Skopeo
from support.proxy_process import ProxyProcess

from . import eviction
from .docker_pull import DockerPuller, docker_unavailable
from .measure import (
    MeasureError,
    ab_load,
    curl_throughput,
    header_flood,
    idle_clients,
    manifest_pulls,
    skopeo_pulls,
    status_without_redirects,
)
from .procstat import peak_rss_mb, reset_peak_rss
from .relay import RelayProcess
from .results import Results, Row
from .testbed import (
    FULL_IMAGE,
    QUICK_IMAGE,
    REPOSITORY,
    TAG,
    BenchImage,
    ImageShape,
    Server,
    Upstream,
    moto_unavailable,
    start_bare,
    start_distribution,
    start_ours,
)

T = TypeVar("T")

SECTIONS = (
    "pulls",
    "concurrent",
    "docker",
    "manifests",
    "blobs",
    "s3",
    "idle",
    "headers",
    "ttl",
    "eviction",
)


@dataclass(frozen=True)
class Config:
    rounds: int
    sections: frozenset[str]
    image: ImageShape
    load_seconds: float  # each ab run
    blob_gets: int  # per curl client, filesystem
    s3_blob_gets: int  # per curl client, S3
    ttl_pulls: int
    eviction_blobs: int
    connections: int = 32
    blob_clients: int = 4
    concurrent_pulls: int = 8
    warm_pulls: int = 5  # per server and round, the round's figure their median
    idle_clients: int = 1000
    idle_settle: float = 20.0
    header_clients: int = 300
    header_bytes: int = 1024 * 1024

    @classmethod
    def full(cls, rounds: int, sections: frozenset[str]) -> Config:
        return cls(
            rounds,
            sections,
            FULL_IMAGE,
            load_seconds=3.0,
            blob_gets=4,
            s3_blob_gets=2,
            ttl_pulls=100,
            eviction_blobs=10_000,
        )

    @classmethod
    def quick(cls, rounds: int, sections: frozenset[str]) -> Config:
        """Under two minutes: a 24 MB image, 1 s per ab run, 500 idle clients, fewer
        repetitions."""
        return cls(
            rounds,
            sections,
            QUICK_IMAGE,
            load_seconds=1.0,
            blob_gets=2,
            s3_blob_gets=1,
            ttl_pulls=10,
            eviction_blobs=1_000,
            idle_clients=500,
            idle_settle=3.0,
            header_clients=100,
            header_bytes=256 * 1024,
            warm_pulls=1,
        )


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """``items`` starting at position ``turn`` (mod len): each round starts with another."""
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


def port_of(server: Server) -> int:
    return int(server.host.rsplit(":", 1)[1])


def pid_of(server: Server) -> int:
    pid = server.pid
    assert pid is not None, "the server is not running"
    return pid


class SideBySide:
    def __init__(self, config: Config, workdir: Path, results: Results) -> None:
        self.config = config
        self.workdir = workdir
        self.results = results
        self.sections = config.sections
        self.timings: dict[str, float] = {}
        self._upstream: Upstream | None = None
        self._image: BenchImage | None = None
        self.skopeo = Skopeo(workdir / "skopeo")
        n = config
        self.rows = {
            "cold": Row("cold_pull", "cold pull, skopeo", "s", "lower", chart=True),
            "cold_up": Row(
                "cold_pull_upstream", "cold pull, skopeo: upstream bytes / image", "x", "lower"
            ),
            "warm": Row("warm_pull", "warm pull, skopeo", "s", "lower", chart=True),
            "conc": Row(
                "concurrent",
                f"{n.concurrent_pulls} concurrent cold pulls, skopeo",
                "s",
                "lower",
                chart=True,
            ),
            "conc_warm": Row(
                "concurrent_warm",
                f"{n.concurrent_pulls} concurrent warm pulls, skopeo (the clients' floor)",
                "s",
                "lower",
                chart=True,
            ),
            "conc_up": Row(
                "concurrent_upstream",
                f"{n.concurrent_pulls} concurrent cold pulls: upstream bytes / image",
                "x",
                "lower",
                chart=True,
            ),
            "conc_rss": Row(
                "concurrent_rss",
                f"{n.concurrent_pulls} concurrent cold pulls: peak RSS",
                "MB",
                "lower",
                chart=True,
            ),
            "docker": Row(
                "docker_cold_pull", "cold pull, Docker daemon via mirror", "s", "lower", chart=True
            ),
            "docker_up": Row(
                "docker_cold_upstream",
                "cold pull, Docker daemon: upstream bytes / image",
                "x",
                "lower",
            ),
            "blob": Row(
                "blob_filesystem",
                f"warm blob GETs, local directory ({n.blob_clients} clients)",
                "MB/s",
                "higher",
                chart=True,
            ),
            "s3": Row(
                "blob_s3",
                "warm blob GETs, S3 on moto, bytes through the server",
                "MB/s",
                "higher",
                chart=True,
            ),
            "s3_redirect": Row(
                "blob_s3_redirect",
                "warm blob GETs, S3 on moto, redirect to presigned URL",
                "MB/s",
                "higher",
                chart=True,
            ),
            "warm_rss": Row(
                "warm_rss", "peak RSS over the warm manifest and blob runs", "MB", "lower"
            ),
            "idle_rss": Row(
                "idle_clients_rss",
                f"peak RSS, {n.idle_clients} clients asking for a blob and reading nothing",
                "MB",
                "lower",
                chart=True,
            ),
            "headers_peak": Row(
                "header_flood_rss",
                f"peak RSS, {n.header_clients} clients sending "
                f"{n.header_bytes // 1024} KiB of unfinished headers",
                "MB",
                "lower",
                chart=True,
            ),
            "headers_after": Row(
                "header_flood_rss_after",
                f"RSS once those {n.header_clients} clients left",
                "MB",
                "lower",
            ),
            "ttl_gets": Row(
                "ttl_manifest_gets",
                f"{n.ttl_pulls} warm pulls after the tag TTL: upstream manifest GETs (pulls)",
                "requests",
                "lower",
            ),
            "ttl_heads": Row(
                "ttl_manifest_heads",
                f"{n.ttl_pulls} warm pulls after the tag TTL: upstream manifest HEADs",
                "requests",
                "lower",
            ),
        }

    # ----------------------------------------------------------------- the whole run

    def run(self) -> dict[str, Any]:
        """Measure every selected section; return facts about the run for the JSON."""
        if self.sections - {"eviction"}:
            missing = missing_binaries("docker-registry", "skopeo", "curl")
            if missing:
                self.results.skipped["side-by-side"] = (
                    f"missing programs: {', '.join(missing)} "
                    "(apt-get install docker-registry skopeo curl)"
                )
            else:
                self._with_upstream()
        if "eviction" in self.sections:
            with self._timed("eviction"):
                eviction.run(self.config, self.workdir / "eviction", self.results)
        image = self._image
        return {
            "image_bytes": image.size if image else None,
            "biggest_blob_bytes": image.biggest_size if image else None,
            "section_seconds": {k: round(v, 1) for k, v in self.timings.items()},
        }

    def _with_upstream(self) -> None:
        """Every section but eviction: the upstream, the image, and the rounds."""
        if "manifests" in self.sections and missing_binaries("ab"):
            self.results.skipped["manifests"] = "ab not found (apt-get install apache2-utils)"
        with ExitStack() as stack:
            with self._timed("setup"):
                self._upstream = stack.enter_context(Upstream(self.workdir / "upstream"))
                print(f"building and pushing the image ({self._image_mb()} MB) ...", flush=True)
                self._image = self._upstream.push(self.config.image, self.skopeo)
            docker = self._docker(stack)
            moto = self._moto(stack)
            for turn in range(self.config.rounds):
                print(f"round {turn + 1} of {self.config.rounds}", flush=True)
                if self.sections & {"pulls", "manifests", "blobs", "idle", "headers"}:
                    with self._timed("pulls, manifests, blobs, idle"):
                        self.warm_round(turn)
                if "concurrent" in self.sections:
                    with self._timed("concurrent"):
                        self.concurrent_round(turn)
                if docker is not None:
                    with self._timed("docker"):
                        self.docker_round(turn, docker)
                if moto is not None:
                    with self._timed("s3"):
                        self.s3_round(turn, moto)
            if "ttl" in self.sections:
                with self._timed("ttl"):
                    self.ttl_check()

    def _image_mb(self) -> int:
        shape = self.config.image
        return round((shape.base_layer + sum(shape.other_layers)) / 1e6)

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started

    def _docker(self, stack: ExitStack) -> DockerPuller | None:
        if "docker" not in self.sections:
            return None
        reason = docker_unavailable()
        if reason is not None:
            self.results.skipped["docker"] = reason
            return None
        return stack.enter_context(DockerPuller(self.workdir / "docker"))

    def _moto(self, stack: ExitStack) -> MotoServer | None:
        if "s3" not in self.sections:
            return None
        reason = moto_unavailable()
        if reason is not None:
            self.results.skipped["s3"] = reason
            return None
        return stack.enter_context(MotoServer(workdir=self.workdir / "moto"))

    @property
    def upstream(self) -> Upstream:
        assert self._upstream is not None
        return self._upstream

    @property
    def image(self) -> BenchImage:
        assert self._image is not None
        return self._image

    def _fresh_dir(self, name: str) -> Path:
        path = self.workdir / "servers" / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def _record_traffic(self, row: Row, name: str, since: int) -> None:
        traffic = self.upstream.traffic(since)
        self.results.add(row, name, traffic.bytes / self.image.size)

    # ----------------------------------------------------------------- pulls, warm rows, idle

    def warm_round(self, turn: int) -> None:
        sections, results, image = self.sections, self.results, self.image
        far = self.upstream.far_url
        with ExitStack() as stack:
            ours = start_ours(self._fresh_dir("ours"), far)
            stack.callback(ours.stop)
            dist = start_distribution(self._fresh_dir("distribution"), far)
            stack.callback(dist.stop)
            bare = start_bare(self._fresh_dir("bare"), image)
            stack.callback(bare.stop)
            servers: dict[str, Server] = {"ours": ours, "distribution": dist, "bare": bare}
            pulls = self.workdir / "pulls"

            for name in rotated(("ours", "distribution", "direct"), turn):
                host = self.upstream.far_host if name == "direct" else servers[name].host
                mark = self.upstream.mark()
                self.results.start_measuring()
                wall = skopeo_pulls(self.skopeo, f"{host}/{REPOSITORY}:{TAG}", pulls, image.pushed)
                if "pulls" in sections:
                    results.add(self.rows["cold"], name, wall)
                    self._record_traffic(self.rows["cold_up"], name, mark)
                print(f"  cold pull, {name}: {wall:.2f} s", flush=True)
            # A warm pull is about a second, and one pull moves by a few per cent from one try
            # to the next: each round's figure is the median of several, taken in turns.
            walls: dict[str, list[float]] = {name: [] for name in servers}
            self.results.start_measuring()
            for pull in range(self.config.warm_pulls):
                for name in rotated(("ours", "distribution", "bare"), turn + pull):
                    server = servers[name]
                    walls[name].append(
                        skopeo_pulls(
                            self.skopeo, f"{server.host}/{REPOSITORY}:{TAG}", pulls, image.pushed
                        )
                    )
            for name, times in walls.items():
                wall = statistics.median(times)
                if "pulls" in sections:
                    results.add(self.rows["warm"], name, wall)
                tries = " ".join(f"{t:.2f}" for t in times)
                print(f"  warm pull, {name}: {wall:.2f} s (median of {tries})", flush=True)

            for server in servers.values():
                reset_peak_rss(pid_of(server))
            if "manifests" in sections and "manifests" not in results.skipped:
                self.manifest_loads(servers, turn)
            if "blobs" in sections:
                for name in rotated(("ours", "distribution", "bare"), turn):
                    self.results.start_measuring()
                    rate = curl_throughput(
                        servers[name].url + image.blob_path,
                        clients=self.config.blob_clients,
                        gets=self.config.blob_gets,
                        expected_size=image.biggest_size,
                    )
                    results.add(self.rows["blob"], name, rate)
                    print(f"  warm blob, {name}: {rate} MB/s", flush=True)
            if sections & {"manifests", "blobs"}:
                for name, server in servers.items():
                    results.add(self.rows["warm_rss"], name, peak_rss_mb(pid_of(server)))
            if "idle" in sections:
                for name in rotated(("ours", "distribution", "bare"), turn):
                    server = servers[name]
                    self.results.start_measuring()
                    idle = idle_clients(
                        pid_of(server),
                        port_of(server),
                        image.blob_path,
                        self.config.idle_clients,
                        self.config.idle_settle,
                    )
                    results.add(self.rows["idle_rss"], name, idle.peak_rss_mb)
                    results.notes.append(
                        f"round {turn + 1}, {idle.clients} idle clients, {name}: RSS "
                        f"{idle.rss_before_mb} -> peak {idle.peak_rss_mb} MB, answers "
                        f"{idle.answers}, answered a new client meanwhile: {idle.healthy_after}"
                    )
                    print(f"  {idle.clients} idle clients, {name}: {idle}", flush=True)
            if "headers" in sections:
                self.header_floods(servers, turn)

    def header_floods(self, servers: dict[str, Server], turn: int) -> None:
        for name in rotated(("ours", "distribution", "bare"), turn):
            server = servers[name]
            self.results.start_measuring()
            flood = header_flood(
                pid_of(server),
                port_of(server),
                self.config.header_clients,
                self.config.header_bytes,
                self.config.idle_settle,
            )
            self.results.add(self.rows["headers_peak"], name, flood.peak_rss_mb)
            self.results.add(self.rows["headers_after"], name, flood.rss_after_mb)
            self.results.notes.append(
                f"round {turn + 1}, {flood.clients} clients with unfinished headers, {name}: RSS "
                f"{flood.rss_before_mb} -> peak {flood.peak_rss_mb} -> {flood.rss_after_mb} MB "
                f"after, answers {flood.answers}, a new client answered meanwhile: "
                f"{flood.healthy_during}"
            )
            print(f"  unfinished headers, {name}: {flood}", flush=True)

    def manifest_loads(self, servers: dict[str, Server], turn: int) -> None:
        image = self.image
        for method in ("HEAD", "GET"):
            for by, path in (("tag", image.tag_path), ("digest", image.digest_path)):
                what = f"warm manifest {method} by {by}"
                key = f"manifest_{method.lower()}_{by}"
                title = f"{what}, {self.config.connections} connections"
                rate = Row(key, title, "req/s", "higher", chart=True)
                p50 = Row(f"{key}_p50", f"{what}: p50 latency", "ms", "lower")
                p99 = Row(f"{key}_p99", f"{what}: p99 latency", "ms", "lower")
                for name in rotated(("ours", "distribution", "bare"), turn):
                    self.results.start_measuring()
                    figures = ab_load(
                        servers[name].url + path,
                        head=method == "HEAD",
                        connections=self.config.connections,
                        seconds=self.config.load_seconds,
                        workdir=self.workdir / "ab",
                    )
                    self.results.add(rate, name, figures.per_second)
                    self.results.add(p50, name, figures.p50_ms)
                    self.results.add(p99, name, figures.p99_ms)
                    if figures.failures:
                        self.results.notes.append(
                            f"round {turn + 1}, {what}, {name}: {figures.failures} of "
                            f"{figures.requests} requests failed or were not 2xx"
                        )
                    print(f"  {what}, {name}: {figures}", flush=True)

    # ----------------------------------------------------------------- concurrent cold pulls

    def concurrent_round(self, turn: int) -> None:
        count = self.config.concurrent_pulls
        starters: dict[str, Callable[[Path, str], Server]] = {
            "ours": lambda d, u: start_ours(d, u),
            "distribution": lambda d, u: start_distribution(d, u),
        }
        for name in rotated(("ours", "distribution"), turn):
            with ExitStack() as stack:
                server = starters[name](
                    self._fresh_dir(f"{name}-concurrent"), self.upstream.far_url
                )
                stack.callback(server.stop)
                reset_peak_rss(pid_of(server))
                mark = self.upstream.mark()
                self.results.start_measuring()
                wall = skopeo_pulls(
                    self.skopeo,
                    f"{server.host}/{REPOSITORY}:{TAG}",
                    self.workdir / "pulls",
                    self.image.pushed,
                    count,
                )
                self.results.add(self.rows["conc"], name, wall)
                self.results.add(self.rows["conc_rss"], name, peak_rss_mb(pid_of(server)))
                self._record_traffic(self.rows["conc_up"], name, mark)
                print(f"  {count} concurrent cold pulls, {name}: {wall:.2f} s", flush=True)
                # The same pulls again, everything cached: what the clients themselves need on
                # this machine, the floor under the cold figure.
                self.results.start_measuring()
                warm = skopeo_pulls(
                    self.skopeo,
                    f"{server.host}/{REPOSITORY}:{TAG}",
                    self.workdir / "pulls",
                    self.image.pushed,
                    count,
                )
                self.results.add(self.rows["conc_warm"], name, warm)
                print(f"  {count} concurrent warm pulls, {name}: {warm:.2f} s", flush=True)

    # ----------------------------------------------------------------- the Docker daemon

    def docker_round(self, turn: int, docker: DockerPuller) -> None:
        config_digest = self.image.pushed.platform("linux/amd64").config_digest
        reference = f"{REPOSITORY.removeprefix('library/')}:{TAG}"
        for name in rotated(("ours", "distribution", "direct"), turn):
            workdir = self._fresh_dir(f"{name}-docker")
            with ExitStack() as stack:
                server: Server
                if name == "ours":
                    server = start_ours(workdir, self.upstream.far_url, port=docker.port)
                elif name == "distribution":
                    server = start_distribution(workdir, self.upstream.far_url, port=docker.port)
                else:  # the mirror is a relay straight to the upstream
                    relay = RelayProcess(workdir, self.upstream.near.port, port=docker.port)
                    relay.start()
                    server = relay
                stack.callback(server.stop)
                mark = self.upstream.mark()
                self.results.start_measuring()
                wall = docker.cold_pull(reference, config_digest)
                self.results.add(self.rows["docker"], name, wall)
                self._record_traffic(self.rows["docker_up"], name, mark)
                print(f"  Docker daemon cold pull, {name}: {wall:.2f} s", flush=True)

    # ----------------------------------------------------------------- S3

    def s3_round(self, turn: int, moto: MotoServer) -> None:
        """Each variant on its own bucket, filled through the upstream without the WAN (only the
        warm GETs are measured), then the bucket is dropped with the rest of moto's state."""
        image = self.image
        variants = [
            ("ours", False),
            ("distribution", False),
            ("ours", True),
            ("distribution", True),
        ]
        for name, redirect in rotated(variants, turn):
            bucket = moto.create_bucket()
            workdir = self._fresh_dir(f"{name}-s3{'-redirect' if redirect else ''}")
            with ExitStack() as stack:
                server: Server
                if name == "ours":
                    env = {
                        **CREDENTIALS,
                        "AWS_EC2_METADATA_DISABLED": "true",
                        "PROXY_STORAGE": f"s3://{bucket}/cache",
                        "PROXY_S3_ENDPOINT_URL": moto.endpoint_url,
                        "PROXY_SPOOL_DIR": str(workdir / "spool"),
                        "PROXY_BLOB_REDIRECT": "true" if redirect else "false",
                    }
                    server = start_ours(workdir, self.upstream.near.url, env=env)
                else:
                    storage = {
                        "s3": {
                            "accesskey": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            "secretkey": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            "region": CREDENTIALS["AWS_DEFAULT_REGION"],
                            "regionendpoint": moto.endpoint_url,
                            "bucket": bucket,
                            "secure": False,
                            "rootdirectory": "/distribution",
                        },
                        "redirect": {"disable": not redirect},
                        "delete": {"enabled": True},
                    }
                    server = start_distribution(workdir, self.upstream.near.url, storage=storage)
                stack.callback(server.stop)
                url = server.url + image.blob_path
                self._fill(url)
                if isinstance(server, ProxyProcess):
                    # Its clients' last bytes go once the blob verified; the upload to the
                    # bucket completes after. Until then GETs are served from the download's
                    # spool on local disk, which is not what this row measures.
                    self._await_fetched(server, image.biggest_blob)
                self._await_status(name, url, 307 if redirect else 200)
                self.results.start_measuring()
                rate = curl_throughput(
                    url,
                    clients=self.config.blob_clients,
                    gets=self.config.s3_blob_gets,
                    expected_size=image.biggest_size,
                )
                self.results.add(self.rows["s3_redirect" if redirect else "s3"], name, rate)
                print(f"  warm blob from S3, {name}, redirect {redirect}: {rate} MB/s", flush=True)
        moto.reset()

    @staticmethod
    def _await_fetched(server: ProxyProcess, digest: str, timeout: float = 60.0) -> None:
        """Wait until registry-proxy logged the end of its download of ``digest`` (the blob
        stored, the download let go: later requests read the cache)."""

        def fetched() -> bool:
            for line in server.log_path.read_text(errors="replace").splitlines():
                if '"blob.fetched"' in line and digest in line:
                    return True
            return False

        wait_for(fetched, timeout, interval=0.1, what=f"registry-proxy to store {digest}")

    @staticmethod
    def _await_status(name: str, url: str, expected: int, timeout: float = 60.0) -> None:
        """Wait until a GET of ``url`` answers ``expected``. registry-proxy serves a blob from
        its download until it is stored (clients' last bytes go once verified, the S3 upload
        completes after them): the redirect comes once the blob is in the bucket."""
        statuses: list[int] = []

        def answers_as_cached() -> bool:
            statuses.append(status_without_redirects(url))
            return statuses[-1] == expected

        try:
            wait_for(answers_as_cached, timeout, interval=0.2, what=f"{url} to answer {expected}")
        except TimeoutError:
            raise MeasureError(f"{name} answers a warm blob GET with {statuses[-1]}") from None

    def _fill(self, url: str, timeout: float = 120.0) -> None:
        """GET the blob once, then wait until the server has it: distribution commits a blob to
        its storage some seconds after the response that fetched it has ended (a multipart
        upload to S3), and until then sends every request for it upstream again.  The probe is
        a HEAD, which costs the upstream a HEAD while the blob is not stored, and nothing after.
        """
        curl_throughput(url, clients=1, gets=1, expected_size=self.image.biggest_size)

        def stored() -> bool:
            mark = self.upstream.mark()
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30):
                pass
            traffic = self.upstream.traffic(mark)
            return traffic.blob_heads == traffic.blob_gets == 0

        wait_for(stored, timeout, interval=0.5, what=f"{url} to be stored")

    # ----------------------------------------------------------------- tag TTL

    def ttl_check(self) -> None:
        """Counts, not timings: measured once.  registry-proxy runs with a 1 s tag TTL here;
        distribution has no such setting (it asks the upstream on every request by tag)."""
        ttl = 1.0
        image = self.image
        far = self.upstream.far_url
        with ExitStack() as stack:
            ours = start_ours(self._fresh_dir("ours-ttl"), far, env={"PROXY_TAG_TTL": str(ttl)})
            stack.callback(ours.stop)
            dist = start_distribution(self._fresh_dir("distribution-ttl"), far)
            stack.callback(dist.stop)
            servers: dict[str, Server] = {"ours": ours, "distribution": dist}
            for server in servers.values():
                manifest_pulls(server.url, image.tag_path, image.digest_path, 1)
            time.sleep(ttl + 0.5)  # the scenario itself: the tag's TTL has passed
            for name, server in servers.items():
                mark = self.upstream.mark()
                started = time.monotonic()
                manifest_pulls(server.url, image.tag_path, image.digest_path, self.config.ttl_pulls)
                wall = time.monotonic() - started
                traffic = self.upstream.traffic(mark)
                self.results.add(self.rows["ttl_gets"], name, traffic.manifest_gets)
                self.results.add(self.rows["ttl_heads"], name, traffic.manifest_heads)
                self.results.notes.append(
                    f"{self.config.ttl_pulls} warm pulls' manifests after the TTL, {name}: "
                    f"{wall:.1f} s, upstream {traffic}"
                )
                print(f"  TTL check, {name}: {traffic} in {wall:.1f} s", flush=True)
