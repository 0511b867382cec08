"""What the capacity section reads while the proxy works, and the figures it makes of it.

* Where things run: :func:`on_cores` (this process and what it starts, on the test bed's
  cores) and :func:`as_the_task` (the proxy and its probe on core 0, ahead of other processes).
* :class:`Watcher`: every second, the proxy's CPU, RSS, open files, its connections (clients,
  S3, upstream: :mod:`.hoststat`) and from ``/metrics`` the requests in progress and the
  upstream fetches in flight.
* :class:`Probe`: ``capacity_probe.py`` on the proxy's core, tiny requests at a steady pace.
* :class:`AccessLog`: the proxy's JSON log between two offsets (its 5xx answers, its manifest
  requests, its embedded-metric-format lines).
* :class:`Window` and :func:`window_figures`: everything above between two moments, and
  :func:`saturation`, which resources were at their limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.moto import MotoServer
from support.proxy_process import ProxyProcess

from . import hoststat
from .procstat import MB, MiB, open_files, proc_status

PROXY_CORE = 0


TASK_NICE = -10  # the proxy's and its probe's priority on their core


PROBE_SCRIPT = Path(__file__).with_name("capacity_probe.py")


S3_POOL = 64  # proxy/storage/s3.py: max_pool_connections


# A resource counts as saturated at this share of its limit, averaged over a step.
SATURATED = 0.9


# A step's figures are noisy when the proxy's event loop, ready to run, waited this share of
# the time (percent) for its core: other processes had it.
NOISE = 5.0


@contextlib.contextmanager
def on_cores(cores: set[int]) -> Iterator[None]:
    """Run this process (and so every process it starts meanwhile) on ``cores``."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def as_the_task() -> Iterator[None]:
    """Start processes as the task's vCPU would run them: on the proxy's core, and ahead of
    other processes there (nice ``TASK_NICE``, when this process may raise a priority).  A
    Fargate task's vCPU is its own; on a shared machine the kernel moves everything else onto
    the core the busy test bed leaves, and the proxy would wait for its core behind it."""
    with on_cores({PROXY_CORE}):
        try:
            os.nice(TASK_NICE)
        except PermissionError:
            yield
            return
        try:
            yield
        finally:
            os.nice(-TASK_NICE)


def scrape(url: str) -> dict[str, float]:
    """The proxy's /metrics as {sample with labels: value} (one GET, a few ms)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


def metric(values: Mapping[str, float], name: str) -> float:
    """The sum of every sample of ``name`` (any labels)."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


IN_PROGRESS_METRIC = "registry_proxy_requests_in_progress"


FETCHES_METRIC = "registry_proxy_inflight_fetches"


@dataclass
class Sample:
    at: float
    cpu: float  # the proxy's CPU seconds so far
    rss: int
    fds: int
    clients: int  # established client connections
    s3: int  # established connections to S3 (the storage client's pool)
    upstream: int
    fetches: float
    in_progress: float | None  # requests in progress (the client cap's count), if reported


class Watcher:
    """Samples the proxy every ``interval`` seconds in a thread of its own."""

    def __init__(self, proxy: ProxyProcess, ports: Mapping[str, int], interval: float) -> None:
        self.proxy = proxy
        self.ports = dict(ports)
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> Sample:
        pid = self.proxy.pid
        assert pid is not None
        values = scrape(self.proxy.url)
        connections = hoststat.connections(pid, self.proxy.port, self.ports)
        progress = values.get(IN_PROGRESS_METRIC)
        return Sample(
            at=time.monotonic(),
            cpu=hoststat.process_cpu_seconds(pid),
            rss=proc_status(pid)["VmRSS"],
            fds=open_files(pid),
            clients=connections["clients"],
            s3=connections.get("s3", 0),
            upstream=connections.get("upstream", 0),
            fetches=values.get(FETCHES_METRIC, 0.0),
            in_progress=progress,
        )

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(await asyncio.to_thread(self.sample))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


class Probe:
    """capacity_probe.py on the proxy's core, its lines in a file."""

    def __init__(
        self, workdir: Path, port: int, interval: float, manifest_path: str, blob_path: str
    ) -> None:
        self.out = workdir / "probe.txt"
        self.port = port
        self.interval = interval
        # /healthz: the event loop alone; /healthz/local: the load balancer's check (it also
        # writes to the spool in a worker thread); the manifest by tag, as a pull's first
        # request (answered from memory); a layer's HEAD (a HeadObject on S3: the S3 pool).
        self.paths = {
            "lag": "/healthz",
            "health": "/healthz/local",
            "manifest": manifest_path,
            "blob": blob_path,
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, str(PROBE_SCRIPT), "--port", str(self.port)]
        argv += ["--interval", str(self.interval), *self.paths.values()]
        with as_the_task(), self.out.open("wb") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None

    def figures(self, start: float, end: float) -> dict[str, Any]:
        """p50 and p99 in ms of each probe between ``start`` and ``end``, and its failures."""
        names = list(self.paths)
        latencies: dict[str, list[float]] = {name: [] for name in names}
        failures = 0
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4 or not start <= float(parts[0]) <= end:
                continue
            if parts[3] != "200":
                failures += 1
            else:
                latencies[names[int(parts[1])]].append(float(parts[2]))
        out: dict[str, Any] = {"probe_failures": failures}
        for name, values in latencies.items():
            out[f"probe_{name}_p50_ms"] = r(percentile(values, 50), 2)
            out[f"probe_{name}_p99_ms"] = r(percentile(values, 99), 2)
            out[f"probe_{name}_max_ms"] = r(max(values, default=0.0), 2)
        return out


class AccessLog:
    """The proxy's JSON log: request lines and metric lines written between two offsets."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size

    def lines(self, start: int, end: int | None = None) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        records = []
        for line in data.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records


MANIFEST_PATH = re.compile(r"^/v2/.+/manifests/[^/]+$")


def manifest_requests(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r.get("event") == "request"
        and MANIFEST_PATH.match(str(r.get("path", "")))
        and r.get("method") in ("GET", "HEAD")
    ]


def server_errors(records: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"{r.get('method')} {r.get('path')}: {r.get('status')}"
        for r in records
        if r.get("event") == "request" and int(r.get("status", 0)) >= 500
    ]


def emf_values(records: Sequence[dict[str, Any]], name: str) -> list[float]:
    return [
        float(r[name])
        for r in records
        if r.get("event") == "metrics" and "_aws" in r and isinstance(r.get(name), int | float)
    ]


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def r(value: float, digits: int = 1) -> float:
    return round(value, digits)


@dataclass
class Window:
    """What the kernel and the proxy said at one moment, to subtract from a later one."""

    at: float
    proxy_cpu: float
    proxy_waited: float  # seconds its event loop waited for a CPU
    moto_cpu: float
    cores: dict[int, hoststat.CoreTime]
    children_cpu: float
    metrics: dict[str, float]
    log_offset: int
    load1: float

    @classmethod
    def now(cls, proxy: ProxyProcess, moto: MotoServer, log: AccessLog) -> Window:
        assert proxy.pid is not None and moto.pid is not None
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            at=time.monotonic(),
            proxy_cpu=hoststat.process_cpu_seconds(proxy.pid),
            proxy_waited=hoststat.run_queue_seconds(proxy.pid),
            moto_cpu=hoststat.process_cpu_seconds(moto.pid),
            cores=hoststat.core_times(),
            children_cpu=usage.ru_utime + usage.ru_stime,
            metrics=scrape(proxy.url),
            log_offset=log.offset(),
            load1=r(os.getloadavg()[0], 2),
        )


def saturation(
    figures: Mapping[str, Any], *, max_fetches: int, memory_mib: int, s3_pool: int = S3_POOL
) -> list[str]:
    """The resources at ``SATURATED`` or more of their limit over the step, first the proxy's."""
    found = []
    if figures["proxy_cpu_percent"] >= 100 * SATURATED:
        found.append("proxy CPU (its one core)")
    if figures["s3_connections_max"] >= SATURATED * s3_pool:
        found.append(f"S3 connection pool ({s3_pool})")
    if figures["fetches_max"] >= SATURATED * max_fetches:
        found.append(f"upstream fetch slots ({max_fetches})")
    if figures["rss_max_mb"] * MB >= SATURATED * memory_mib * MiB:
        found.append("memory")
    bed = [c for c in figures["core_busy_percent"] if c != PROXY_CORE]
    if bed and min(figures["core_busy_percent"][c] for c in bed) >= 100 * SATURATED:
        found.append("test bed's core")
    if figures["cpu_wait_percent"] >= NOISE:
        found.append(f"(noisy: CPU wait {figures['cpu_wait_percent']} %)")
    return found


def window_figures(
    start: Window,
    end: Window,
    samples: Sequence[Sample],
    records: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The proxy's and the machine's figures between two windows."""
    seconds = end.at - start.at
    cores = hoststat.busy_percent(start.cores, end.cores)
    proxy_cpu = 100 * (end.proxy_cpu - start.proxy_cpu) / seconds
    manifests = manifest_requests(records)
    durations = [float(m.get("duration_ms", 0.0)) for m in manifests]
    progress = [s.in_progress for s in samples if s.in_progress is not None]
    per_second_cpu = [
        100 * (b.cpu - a.cpu) / (b.at - a.at) for a, b in itertools.pairwise(samples) if b.at > a.at
    ]
    served = metric(end.metrics, "registry_proxy_served_bytes_total") - metric(
        start.metrics, "registry_proxy_served_bytes_total"
    )
    requests = metric(end.metrics, "registry_proxy_requests_total") - metric(
        start.metrics, "registry_proxy_requests_total"
    )
    return {
        "seconds": r(seconds),
        "proxy_cpu_seconds": r(end.proxy_cpu - start.proxy_cpu, 2),
        "proxy_cpu_percent": r(proxy_cpu),
        "proxy_cpu_percent_max_1s": r(max(per_second_cpu, default=0.0)),
        "moto_cpu_percent": r(100 * (end.moto_cpu - start.moto_cpu) / seconds),
        "core_busy_percent": cores,
        "cpu_wait_percent": r(100 * (end.proxy_waited - start.proxy_waited) / seconds),
        "served_mb": r(served / MB),
        "requests": int(requests),
        "manifest_requests": len(manifests),
        "manifest_p50_ms": r(percentile(durations, 50), 2),
        "manifest_p99_ms": r(percentile(durations, 99), 2),
        "server_errors": server_errors(records),
        "rss_max_mb": r(max((s.rss for s in samples), default=0) / MB),
        "open_files_max": max((s.fds for s in samples), default=0),
        "client_connections_max": max((s.clients for s in samples), default=0),
        "s3_connections_max": max((s.s3 for s in samples), default=0),
        "s3_connections_mean": r(statistics.fmean([s.s3 for s in samples]) if samples else 0.0),
        "upstream_connections_max": max((s.upstream for s in samples), default=0),
        "fetches_max": int(max((s.fetches for s in samples), default=0)),
        "in_progress_mean": r(statistics.fmean(progress), 2) if progress else None,
        "in_progress_max": int(max(progress)) if progress else None,
        "emf_concurrent_requests": emf_values(records, "ConcurrentRequests"),
        # each sample: seconds into the step, S3 connections, requests in progress, fetches
        "samples": [[r(x.at - start.at), x.s3, x.in_progress, int(x.fetches)] for x in samples],
        "load_before": start.load1,
        "load_after": end.load1,
    }
