"""Capacity of one task (``--only capacity``): what saturates first, and how many pulls it carries.

One ``registry-proxy serve`` process with the limits of the stack's task, warm image pulls by
real clients in steps of 10, 25 and 50 at once, and a cold burst; every figure the scaling of
the service needs: throughput, manifest latency, errors, and, beside them, each resource that
could be the first to run out.

The arrangement
    * The task: the proxy pinned to core 0 (the task's one vCPU: ``cpu`` 1024 in infra/cdk.json;
      the proxy is one process with one event loop), with the environment the stack derives
      (``infra/registry_proxy_infra/sizing.py`` on infra/cdk.json's context:
      ``PROXY_MAX_UPSTREAM_FETCHES``, ``PROXY_SPOOL_*``, ``PROXY_MEMORY_LIMIT``; the tag TTL, the
      log level and the blob redirect of the stack's defaults; the client cap at its default),
      S3 storage on moto, and its metric lines every 5 s (``PROXY_CLOUDWATCH_*``).
    * The test bed on the other cores: moto, the upstream (distribution with token auth behind
      the WAN relay, :mod:`.testbed`), the clients, this harness.  Every process the harness
      starts inherits its core; the proxy alone is started from core 0.
    * The clients: ``skopeo copy docker://PROXY/library/golang:bench docker-archive:/dev/null``
      (skopeo verifies every blob's digest; nothing is written to disk), each client pulling
      again as soon as its pull ends, for ``step_seconds``; in the full run also one
      ``docker pull`` through dockerd's mirror in the middle of each step.
    * A probe process on the proxy's core: ``HEAD /healthz/local`` (event-loop lag) and ``HEAD``
      of the manifest by tag, five times a second, on idle keep-alive connections.

Per step: pulls per second and MB/s (each pull counted by the part of it inside the step), pull
wall times, manifest latency (the proxy's access log for the clients' requests, the probe for
a client arriving at an idle moment), errors (failed pulls, 5xx), the proxy's CPU, its RSS and
open connections (clients, S3), the fetch slots in use, each core's load, moto's CPU, the load
average before and after, and which resource saturated.  Then the cost model: CPU seconds per
GB served from S3 and per manifest request, from calibration runs (curl and ab) and from the
steps, and the capacity of one vCPU it implies.  The cold burst: clients pulling images the
proxy has never seen, all at once through the WAN: wall time, upstream bytes per image, fetch
slots, memory.

This module runs the section; :mod:`.capacity_watch` reads the proxy and the machine while it
runs, :mod:`.capacity_report` makes the cost model and the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from support.binaries import missing_binaries
from support.moto import CREDENTIALS, MotoServer
from support.oci_image import AMD64, Skopeo, build_oci_layout, push_image
from support.proxy_process import ProxyProcess

from . import hoststat
from .capacity_report import ImageFacts, brief, cost_model
from .capacity_watch import (
    FETCHES_METRIC,
    PROXY_CORE,
    S3_POOL,
    AccessLog,
    Probe,
    Watcher,
    Window,
    as_the_task,
    on_cores,
    percentile,
    r,
    saturation,
    scrape,
    window_figures,
)
from .docker_pull import DockerPuller, docker_unavailable
from .measure import MeasureError, ab_load, curl_throughput
from .procstat import MB, MiB
from .testbed import (
    FULL_IMAGE,
    HUB_PASSWORD,
    HUB_USER,
    QUICK_IMAGE,
    REPOSITORY,
    TAG,
    BenchImage,
    ImageShape,
    Upstream,
    moto_unavailable,
    on_a_free_port,
)

# The repository: the nearest directory above this file that holds the CDK app.
REPO_ROOT = next(
    d for d in Path(__file__).resolve().parents if (d / "infra" / "cdk.json").is_file()
)


INFRA_DIR = REPO_ROOT / "infra"


EMF_INTERVAL = 5  # seconds between the proxy's metric lines here (60 in the stack)


PULL_TIMEOUT = 600.0


CURL_TIMED_OUT = 28


SETTLE_TIMEOUT = 120.0


COLD_IMAGE = ImageShape(24 * MiB, (16 * MiB, 6 * MiB, 3 * MiB, MiB))


QUICK_COLD_IMAGE = ImageShape(6 * MiB, (4 * MiB, MiB))


@dataclass(frozen=True)
class CapacityConfig:
    steps: tuple[int, ...]
    step_seconds: float
    image: ImageShape
    cold_clients: int
    cold_images: int
    cold_image: ImageShape
    calibration_seconds: float
    calibration_gets: int
    docker: bool
    slow_seconds: float
    slow_clients: int = 80  # more than the S3 pool (64)
    slow_rate: str = "1M"  # bytes per second each slow client reads (curl --limit-rate)
    sample_every: float = 1.0
    probe_every: float = 0.2

    @classmethod
    def full(cls) -> CapacityConfig:
        return cls(
            steps=(10, 25, 50),
            step_seconds=60.0,
            image=FULL_IMAGE,
            cold_clients=50,
            cold_images=5,
            cold_image=COLD_IMAGE,
            calibration_seconds=5.0,
            calibration_gets=3,
            docker=True,
            slow_seconds=30.0,
        )

    @classmethod
    def quick(cls) -> CapacityConfig:
        """About a minute: a 24 MB image, 8 s per step, 10 clients in the cold burst."""
        return cls(
            steps=(10, 25, 50),
            step_seconds=8.0,
            image=QUICK_IMAGE,
            cold_clients=10,
            cold_images=2,
            cold_image=QUICK_COLD_IMAGE,
            calibration_seconds=1.5,
            calibration_gets=1,
            docker=False,
            slow_seconds=8.0,
        )


def unavailable() -> str | None:
    """Why the section cannot run here, or None."""
    missing = missing_binaries("docker-registry", "skopeo", "curl", "ab")
    if missing:
        return (
            f"missing programs: {', '.join(missing)} "
            "(apt-get install docker-registry skopeo curl apache2-utils)"
        )
    if (reason := moto_unavailable()) is not None:
        return reason
    cores = os.sched_getaffinity(0)
    if PROXY_CORE not in cores or len(cores) < 2:
        return f"needs core {PROXY_CORE} and one more (this process may use {sorted(cores)})"
    return None


def _sizing_module() -> ModuleType:
    """infra/registry_proxy_infra/sizing.py alone (the package would load the CDK)."""
    name = "registry_proxy_infra_sizing"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, INFRA_DIR / "registry_proxy_infra" / "sizing.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Task:
    """The stack's task, as infra/cdk.json and the sizing rules make it."""

    cpu_units: int
    memory_mib: int
    environment: dict[str, str]
    notes: tuple[str, ...]

    @property
    def max_fetches(self) -> int:
        return int(self.environment["PROXY_MAX_UPSTREAM_FETCHES"])


def stack_task(spool_dir: Path) -> Task:
    context: dict[str, Any] = json.loads((INFRA_DIR / "cdk.json").read_text())["context"]
    sizing = _sizing_module()
    sizes = sizing.derive_sizes(
        int(context["memoryMiB"]),
        int(context["ephemeralStorageGiB"]),
        int(context["spoolPerFetchMiB"]),
    )
    environment: dict[str, str] = dict(sizes.environment)
    notes = []
    # The proxy checks at start-up that the spool's budget fits its filesystem.
    spool_dir.mkdir(parents=True, exist_ok=True)
    stats = os.statvfs(spool_dir)
    free = stats.f_bavail * stats.f_frsize
    wanted = sizes.spool_max_bytes + sizes.spool_min_free_bytes
    if free < wanted:
        fitting = max(1, (free - sizes.spool_min_free_bytes) // MiB - 1024)
        environment["PROXY_SPOOL_MAX_SIZE"] = f"{fitting}MiB"
        notes.append(
            f"PROXY_SPOOL_MAX_SIZE lowered to {fitting} MiB: the disk here has "
            f"{free // MiB} MiB free (the task: {sizes.spool_max_bytes // MiB} MiB)"
        )
    environment.update(
        {
            "PROXY_TAG_TTL": str(context["tagTtlSeconds"]),
            "PROXY_BLOB_REDIRECT": "true" if context["blobRedirect"] else "false",
            "PROXY_LOG_LEVEL": str(context["logLevel"]),
            "PROXY_CLIENT_IDLE_TIMEOUT": str(int(context["idleTimeoutSeconds"]) + 30),
            "PROXY_SPOOL_DIR": str(spool_dir),
            "PROXY_CLOUDWATCH_NAMESPACE": "RegistryProxy/Capacity",
            "PROXY_CLOUDWATCH_INTERVAL": str(EMF_INTERVAL),
        }
    )
    return Task(int(context["cpu"]), int(context["memoryMiB"]), environment, tuple(notes))


@dataclass(frozen=True)
class Pull:
    started: float
    ended: float
    ok: bool
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def share(self, start: float, end: float) -> float:
        """The part of this pull inside [start, end], as a fraction of the pull."""
        overlap = min(end, self.ended) - max(start, self.started)
        return max(0.0, overlap) / self.seconds if self.seconds > 0 else 0.0


async def skopeo_pull(skopeo: Skopeo, reference: str) -> Pull:
    """One ``skopeo copy`` of ``reference`` (over plain http) to nowhere; skopeo checks each
    blob against its digest, so a pull that exits 0 got the right bytes."""
    argv = skopeo.command(
        "copy", "--src-tls-verify=false", "--src-no-creds", f"docker://{reference}",
        "docker-archive:/dev/null",
    )  # fmt: skip
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=skopeo.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(PULL_TIMEOUT):
            _, stderr = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    ended = time.monotonic()
    if proc.returncode != 0:
        return Pull(started, ended, False, stderr.decode(errors="replace")[-500:])
    return Pull(started, ended, True)


async def pull_loop(skopeo: Skopeo, reference: str, deadline: float, pulls: list[Pull]) -> None:
    while time.monotonic() < deadline:
        pulls.append(await skopeo_pull(skopeo, reference))


class Capacity:
    def __init__(self, config: CapacityConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.skopeo = Skopeo(workdir / "skopeo")
        self.bed_cores = os.sched_getaffinity(0) - {PROXY_CORE}
        self.notes: list[str] = []
        self.task = Task(0, 0, {}, ())  # the stack's, once read
        self.proxy_nice = 0

    async def run(self) -> dict[str, Any]:
        with on_cores(self.bed_cores), contextlib.ExitStack() as stack:
            upstream = stack.enter_context(Upstream(self.workdir / "upstream"))
            print(f"capacity: building and pushing the images ({self._mb()} MB) ...", flush=True)
            image = await asyncio.to_thread(upstream.push, self.config.image, self.skopeo)
            cold = await asyncio.to_thread(self._push_cold_images, upstream)
            moto = stack.enter_context(MotoServer(workdir=self.workdir / "moto"))
            docker = self._docker(stack)
            task = self.task = stack_task(self.workdir / "spool")
            self.notes += task.notes
            proxy = self._start_proxy(stack, moto, upstream, task, docker)
            log = AccessLog(proxy.log_path)
            ports = {"s3": moto.port, "upstream": int(upstream.far_host.rsplit(":", 1)[1])}
            watcher = Watcher(proxy, ports, self.config.sample_every)
            reference = f"{proxy.host}/{REPOSITORY}:{TAG}"
            fill = await skopeo_pull(self.skopeo, reference)  # cold, through the WAN
            if not fill.ok:
                raise MeasureError(f"the first pull failed: {fill.error}")
            await self._settle(proxy)
            small = smallest_layer(proxy.url, image)
            probe = Probe(
                self.workdir, proxy.port, self.config.probe_every, image.tag_path, small.path
            )
            probe.start()
            stack.callback(probe.stop)
            watcher.start()
            try:
                calibration = await self._calibrate(proxy, moto, log, image, small, probe)
                steps = []
                for clients in self.config.steps:
                    steps.append(
                        await self._step(clients, proxy, moto, log, watcher, image, probe, docker)
                    )
                slow = await self._slow_clients(proxy, moto, log, watcher, probe, image)
                burst = await self._cold_burst(proxy, moto, log, watcher, probe, upstream, cold)
            finally:
                await watcher.stop()
            idle_rss = min((s.rss for s in watcher.samples), default=0)
        layers = len(image.pushed.platform(str(AMD64)).layer_digests)
        model = cost_model(calibration, steps, ImageFacts(image.size, layers))
        return {
            "config": {
                **{
                    k: v for k, v in asdict(self.config).items() if k not in ("image", "cold_image")
                },
                "image_mb": r(image.size / MB),
                "image_blobs": len(image.pushed.platform(str(AMD64)).layer_digests) + 1,
                "cold_image_mb": r(cold.size / MB / self.config.cold_images),
            },
            "task": {
                "cpu_units": task.cpu_units,
                "memory_mib": task.memory_mib,
                "environment": {k: v for k, v in task.environment.items() if "SPOOL_DIR" not in k},
                "s3_pool": S3_POOL,
                "proxy_core": PROXY_CORE,
                "proxy_nice": self.proxy_nice,
                "bed_cores": sorted(self.bed_cores),
            },
            "first_pull_seconds": r(fill.seconds, 2),
            "idle_rss_mb": r(idle_rss / MB),
            "calibration": calibration,
            "steps": steps,
            "slow_clients": slow,
            "cold_burst": burst,
            "model": model,
            "notes": self.notes,
        }

    def _mb(self) -> int:
        shape = self.config.image
        return round((shape.base_layer + sum(shape.other_layers)) / MB)

    # -- set-up

    def _push_cold_images(self, upstream: Upstream) -> ColdImages:
        references, sizes, blobs = [], 0, 0
        for i in range(self.config.cold_images):
            shape = self.config.cold_image
            layout = build_oci_layout(
                self.workdir / f"cold-layout-{i}",
                seed=1000 + i,
                base_layer_size=shape.base_layer,
                platform_layer_sizes=shape.other_layers,
                platforms=(AMD64,),
            )
            repository = f"library/cold{i}"
            push_image(
                self.skopeo, layout, upstream.near.host, repository, "burst",
                username=HUB_USER, password=HUB_PASSWORD,
            )  # fmt: skip
            shutil.rmtree(layout.path)
            references.append(f"{repository}:burst")
            sizes += layout.total_size
            (only,) = layout.images
            blobs += len(only.layers) + 1
        return ColdImages(tuple(references), sizes, blobs)

    def _docker(self, stack: contextlib.ExitStack) -> DockerPuller | None:
        if not self.config.docker:
            return None
        reason = docker_unavailable()
        if reason is not None:
            self.notes.append(f"no docker pulls: {reason}")
            return None
        return stack.enter_context(DockerPuller(self.workdir / "docker"))

    def _start_proxy(
        self,
        stack: contextlib.ExitStack,
        moto: MotoServer,
        upstream: Upstream,
        task: Task,
        docker: DockerPuller | None,
    ) -> ProxyProcess:
        bucket = moto.create_bucket()
        env = {
            **CREDENTIALS,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PROXY_STORAGE": f"s3://{bucket}/cache",
            "PROXY_S3_ENDPOINT_URL": moto.endpoint_url,
            **task.environment,
        }

        def start() -> ProxyProcess:
            proxy = ProxyProcess(
                self.workdir / "proxy",
                upstream.far_url,
                username=HUB_USER,
                password=HUB_PASSWORD,
                port=docker.port if docker is not None else None,
                extra_env=env,
            )
            with as_the_task():  # its threads too: they inherit both
                proxy.start()
            assert proxy.pid is not None
            self.proxy_nice = os.getpriority(os.PRIO_PROCESS, proxy.pid)
            return proxy

        proxy = on_a_free_port(start) if docker is None else start()
        stack.callback(proxy.stop)
        return proxy

    async def _settle(self, proxy: ProxyProcess) -> None:
        """Wait until no upstream fetch is in progress (the cache has the whole image)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while scrape(proxy.url).get(FETCHES_METRIC, 0.0) > 0:
            if time.monotonic() > deadline:
                raise MeasureError("the proxy's fetches did not end")
            await asyncio.sleep(0.2)

    # -- calibration: the cost of one kind of work at a time

    async def _calibrate(
        self,
        proxy: ProxyProcess,
        moto: MotoServer,
        log: AccessLog,
        image: BenchImage,
        small: Layer,
        probe: Probe,
    ) -> dict[str, Any]:
        """One kind of request at a time, from clients on the test bed's cores: the proxy's CPU
        per request.  Two blob sizes separate the cost of a request to S3 from the cost per
        byte."""
        ab_runs = (
            ("manifest HEAD by tag", image.tag_path, True),
            ("manifest GET by digest", image.digest_path, False),
            ("small blob GET from S3", small.path, False),
        )
        out: dict[str, Any] = {}
        for name, path, head in ab_runs:
            start = Window.now(proxy, moto, log)
            figures = await asyncio.to_thread(
                ab_load,
                proxy.url + path,
                head=head,
                connections=16,
                seconds=self.config.calibration_seconds,
                workdir=self.workdir / "ab",
            )
            end = Window.now(proxy, moto, log)
            cpu = end.proxy_cpu - start.proxy_cpu
            out[name] = {
                "requests": figures.requests,
                "failures": figures.failures,
                "per_second": figures.per_second,
                "p50_ms": figures.p50_ms,
                "p99_ms": figures.p99_ms,
                "bytes": small.size if "blob" in name else 0,
                "proxy_cpu_percent": r(100 * cpu / (end.at - start.at)),
                "cpu_ms_per_request": r(1000 * cpu / max(1, figures.requests), 3),
                "cpu_wait_percent": r(
                    100 * (end.proxy_waited - start.proxy_waited) / (end.at - start.at)
                ),
                "core_busy_percent": hoststat.busy_percent(start.cores, end.cores),
                **probe.figures(start.at, end.at),
            }
            print(f"  calibration, {name}: {out[name]}", flush=True)
        start = Window.now(proxy, moto, log)
        clients, gets = 4, self.config.calibration_gets
        rate = await asyncio.to_thread(
            curl_throughput,
            proxy.url + image.blob_path,
            clients=clients,
            gets=gets,
            expected_size=image.biggest_size,
        )
        end = Window.now(proxy, moto, log)
        cpu = end.proxy_cpu - start.proxy_cpu
        out["big blob GET from S3"] = {
            "requests": clients * gets,
            "mb_per_s": rate,
            "bytes": image.biggest_size,
            "proxy_cpu_percent": r(100 * cpu / (end.at - start.at)),
            "cpu_ms_per_request": r(1000 * cpu / (clients * gets), 3),
            "moto_cpu_s_per_gb": r(
                (end.moto_cpu - start.moto_cpu) / (clients * gets * image.biggest_size / 1e9), 3
            ),
            "cpu_wait_percent": r(
                100 * (end.proxy_waited - start.proxy_waited) / (end.at - start.at)
            ),
            "core_busy_percent": hoststat.busy_percent(start.cores, end.cores),
            **probe.figures(start.at, end.at),
        }
        print(f"  calibration, big blob GET from S3: {out['big blob GET from S3']}", flush=True)
        return out

    # -- the steps: warm pulls by N clients at once

    async def _step(
        self,
        clients: int,
        proxy: ProxyProcess,
        moto: MotoServer,
        log: AccessLog,
        watcher: Watcher,
        image: BenchImage,
        probe: Probe,
        docker: DockerPuller | None,
    ) -> dict[str, Any]:
        print(f"  {clients} clients for {self.config.step_seconds} s ...", flush=True)
        reference = f"{proxy.host}/{REPOSITORY}:{TAG}"
        pulls: list[list[Pull]] = [[] for _ in range(clients)]
        start = Window.now(proxy, moto, log)
        deadline = start.at + self.config.step_seconds
        loops = [
            asyncio.create_task(pull_loop(self.skopeo, reference, deadline, mine)) for mine in pulls
        ]
        docker_pull = None
        if docker is not None:
            await asyncio.sleep(self.config.step_seconds / 3)
            docker_pull = asyncio.create_task(asyncio.to_thread(self._docker_pull, docker, image))
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        end = Window.now(proxy, moto, log)
        await asyncio.gather(*loops)
        docker_seconds = await docker_pull if docker_pull is not None else None
        every = [p for mine in pulls for p in mine]
        done = [p for p in every if p.ok and start.at <= p.ended <= end.at]
        started = [p.seconds for p in every if p.ok and p.started <= end.at]
        failed = [p for p in every if not p.ok]
        pulls_in_window = sum(p.share(start.at, end.at) for p in every if p.ok)
        seconds = end.at - start.at
        records = log.lines(start.log_offset, end.log_offset)
        figures = window_figures(start, end, watcher.between(start.at, end.at), records)
        pulls_per_s = pulls_in_window / seconds
        cpu_per_pull = figures["proxy_cpu_seconds"] / pulls_in_window if pulls_in_window else 0.0
        step = {
            "clients": clients,
            "pulls_completed": len(done),
            "pulls_per_s": r(pulls_per_s, 2),
            "mb_per_s": r(pulls_per_s * image.size / MB),
            "pull_p50_s": r(percentile(started, 50), 2),
            "pull_p99_s": r(percentile(started, 99), 2),
            "failed_pulls": len(failed),
            "errors": [p.error for p in failed[:5]],
            **probe.figures(start.at, end.at),
            "proxy_cpu_s_per_pull": r(cpu_per_pull, 3),
            "proxy_cpu_s_per_gb": r(cpu_per_pull / (image.size / 1e9), 3) if cpu_per_pull else 0,
            "docker_pull_s": r(docker_seconds, 2) if docker_seconds is not None else None,
            **figures,
        }
        step["saturated"] = self._saturation(step)
        print(f"  {clients} clients: {brief(step)}", flush=True)
        return step

    def _saturation(self, figures: dict[str, Any]) -> list[str]:
        return saturation(
            figures, max_fetches=self.task.max_fetches, memory_mib=self.task.memory_mib
        )

    def _docker_pull(self, docker: DockerPuller, image: BenchImage) -> float | None:
        config_digest = image.pushed.platform("linux/amd64").config_digest
        try:
            return docker.cold_pull(f"{REPOSITORY.removeprefix('library/')}:{TAG}", config_digest)
        except (MeasureError, RuntimeError, subprocess.SubprocessError) as exc:
            self.notes.append(f"docker pull failed: {exc}"[:1000])
            return None

    # -- slow clients: more blob downloads at once than the S3 pool has connections

    async def _slow_clients(
        self,
        proxy: ProxyProcess,
        moto: MotoServer,
        log: AccessLog,
        watcher: Watcher,
        probe: Probe,
        image: BenchImage,
    ) -> dict[str, Any]:
        """``slow_clients`` curl processes GET the biggest layer at ``slow_rate`` each and
        stop after ``slow_seconds`` (curl's --max-time: exit 28, expected; the transfer is
        longer).  Each download holds an S3 connection while its client reads: past the pool's
        size, the rest wait, and so does every other request that needs S3 (the probe's layer
        HEAD), while the proxy's CPU stays low.  Each client's first byte and bytes read say
        which of them waited."""
        count, seconds = self.config.slow_clients, self.config.slow_seconds
        print(
            f"  {count} slow clients ({self.config.slow_rate}/s each) for {seconds} s", flush=True
        )
        argv = [
            "curl", "--silent", "--show-error", "--fail", "--output", "/dev/null",
            "--limit-rate", self.config.slow_rate, "--max-time", str(seconds),
            "--write-out", "%{time_starttransfer} %{size_download}", proxy.url + image.blob_path,
        ]  # fmt: skip
        start = Window.now(proxy, moto, log)
        procs = [
            await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(count)
        ]
        results = await asyncio.gather(*(proc.communicate() for proc in procs))
        end = Window.now(proxy, moto, log)
        errors = [
            f"curl exit {proc.returncode}: {err.decode(errors='replace')[-300:]}"
            for proc, (_, err) in zip(procs, results, strict=True)
            if proc.returncode not in (0, CURL_TIMED_OUT)
        ]
        # curl: seconds to the first byte (0 when none came) and bytes read
        transfers = [tuple(map(float, out.split())) for out, _ in results if len(out.split()) == 2]
        first_bytes = [at if size else seconds for at, size in transfers]
        records = log.lines(start.log_offset, end.log_offset)
        figures = window_figures(start, end, watcher.between(start.at, end.at), records)
        slow = {
            "clients": count,
            "rate": self.config.slow_rate,
            "first_byte_p50_s": r(percentile(first_bytes, 50), 2),
            "first_byte_max_s": r(max(first_bytes, default=0.0), 2),
            # a client that waited more than a tenth of the step for its first byte
            "waited": sum(1 for at in first_bytes if at > seconds / 10),
            "mb_per_client_min": r(min((size for _, size in transfers), default=0.0) / MB, 1),
            "mb_per_s": r(sum(size for _, size in transfers) / MB / seconds),
            "failed_pulls": len(errors),
            "errors": errors[:5],
            **probe.figures(start.at, end.at),
            **figures,
        }
        slow["saturated"] = self._saturation(slow)
        print(f"  slow clients: {brief(slow)}", flush=True)
        return slow

    # -- the cold burst

    async def _cold_burst(
        self,
        proxy: ProxyProcess,
        moto: MotoServer,
        log: AccessLog,
        watcher: Watcher,
        probe: Probe,
        upstream: Upstream,
        cold: ColdImages,
    ) -> dict[str, Any]:
        count = self.config.cold_clients
        print(f"  cold burst: {count} clients, {len(cold.references)} new images ...", flush=True)
        mark = upstream.mark()
        watcher.interval = 0.25  # the fetch slots' peak is brief
        start = Window.now(proxy, moto, log)
        pulls = await asyncio.gather(
            *(
                skopeo_pull(
                    self.skopeo, f"{proxy.host}/{cold.references[i % len(cold.references)]}"
                )
                for i in range(count)
            )
        )
        end = Window.now(proxy, moto, log)
        await self._settle(proxy)
        watcher.interval = self.config.sample_every
        traffic = await asyncio.to_thread(upstream.traffic, mark)
        records = log.lines(start.log_offset, end.log_offset)
        figures = window_figures(start, end, watcher.between(start.at, end.at), records)
        failed = [p for p in pulls if not p.ok]
        burst = {
            "clients": count,
            "images": len(cold.references),
            "image_mb": r(cold.size / MB / len(cold.references)),
            "wall_s": r(max(p.ended for p in pulls) - start.at, 2),
            "pull_p50_s": r(percentile([p.seconds for p in pulls], 50), 2),
            "pull_p99_s": r(percentile([p.seconds for p in pulls], 99), 2),
            "failed_pulls": len(failed),
            "errors": [p.error for p in failed[:5]],
            "upstream_bytes_per_image_set": r(traffic.bytes / cold.size, 2),
            "upstream_blob_gets": traffic.blob_gets,
            "distinct_blobs": cold.blobs,
            "upstream_manifest_gets": traffic.manifest_gets,
            **probe.figures(start.at, end.at),
            **figures,
        }
        burst["saturated"] = self._saturation(burst)
        print(f"  cold burst: {brief(burst)}", flush=True)
        return burst


@dataclass(frozen=True)
class ColdImages:
    references: tuple[str, ...]
    size: int  # bytes of all of them
    blobs: int  # distinct blobs (configs and layers)


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int

    @property
    def path(self) -> str:
        return f"/v2/{REPOSITORY}/blobs/{self.digest}"


def smallest_layer(base_url: str, image: BenchImage) -> Layer:
    """The image's smallest layer (its size from a HEAD through the proxy)."""
    sizes = {}
    for digest in image.pushed.platform(str(AMD64)).layer_digests:
        request = urllib.request.Request(
            f"{base_url}/v2/{REPOSITORY}/blobs/{digest}", method="HEAD"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            sizes[digest] = int(response.headers["Content-Length"])
    digest = min(sizes, key=lambda d: sizes[d])
    return Layer(digest, sizes[digest])


def capacity_section(config: CapacityConfig, workdir: Path) -> dict[str, Any]:
    reason = unavailable()
    if reason is not None:
        return {"skipped": reason}
    return asyncio.run(Capacity(config, workdir / "capacity").run())
