"""The measuring instruments, each one client program or one kind of request.

* :func:`skopeo_pulls`: N ``skopeo copy`` processes at once; wall time; every copy verified.
* :func:`ab_load`: ApacheBench (``ab -k``, Debian package apache2-utils) for request rates and
  latency percentiles.  A load generator in C on one core, so that on a 2-core machine the client
  is not the bottleneck of a server doing 15 000 requests/s (a Python client would be).
* :func:`curl_throughput`: parallel ``curl`` processes that each GET a blob several times on one
  keep-alive connection (following redirects), bytes to /dev/null; MB/s over the wall time.
* :func:`idle_clients`: many connections that each ask for a blob and then read nothing.
* :func:`manifest_pulls`: the manifest requests of a pull (the tag, then the platform manifest
  by digest), as many times as asked.
* :func:`header_flood`: many connections that each send a megabyte of headers that never end.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from support.binaries import wait_for
from support.distribution import MANIFEST_ACCEPT
from support.oci_image import PushedImage, Skopeo, verify_dir_copy

from .procstat import MB, peak_rss_mb, reset_peak_rss, rss_mb

AB_PERCENTILE_LINE = re.compile(r"^(\d+),([\d.]+)$")


class MeasureError(RuntimeError):
    """A client failed, or what it got is not what the upstream holds."""


# --------------------------------------------------------------------- pulls


def skopeo_pulls(
    skopeo: Skopeo, reference: str, outdir: Path, image: PushedImage, count: int = 1
) -> float:
    """Wall seconds for ``count`` simultaneous ``skopeo copy --all docker://REF dir:...``."""
    outdir.mkdir(parents=True, exist_ok=True)
    outs = [outdir / f"pull-{i}" for i in range(count)]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    results = skopeo.run_many(
        [skopeo.copy_args_to_dir(reference, out) for out in outs], timeout=900
    )
    wall = time.monotonic() - started
    try:
        for result in results:
            if result.returncode != 0:
                raise MeasureError(f"skopeo failed on {reference}: {result.stdout[-2000:]!r}")
        for out in outs:
            verify_dir_copy(out, image)
    finally:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
    return wall


def manifest_pulls(base_url: str, tag_path: str, digest_path: str, count: int) -> None:
    """``count`` times: GET the tag (the index), then the platform manifest by digest."""
    for _ in range(count):
        for path in (tag_path, digest_path):
            request = urllib.request.Request(base_url + path, headers={"Accept": MANIFEST_ACCEPT})
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()


# --------------------------------------------------------------------- request rates


@dataclass(frozen=True)
class LoadFigures:
    requests: int
    failures: int  # failed and non-2xx
    per_second: float
    p50_ms: float
    p99_ms: float


def ab_load(
    url: str, *, head: bool, connections: int, seconds: float, workdir: Path
) -> LoadFigures:
    """``ab -k -c CONNECTIONS -t SECONDS`` on one manifest URL (HEAD with ``head``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    percentiles = workdir / "ab-percentiles.csv"
    argv = [
        "ab",
        "-q",
        "-k",  # keep-alive, as registry clients do
        "-r",  # count a broken connection as a failure instead of stopping
        "-c",
        str(connections),
        "-t",
        str(seconds),
        "-n",
        "100000000",  # -t alone caps the run at 50 000 requests
        "-H",
        f"Accept: {MANIFEST_ACCEPT}",
        "-e",
        str(percentiles),
        *(["-i"] if head else []),
        url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if proc.returncode != 0:
        raise MeasureError(f"ab exited with {proc.returncode}: {proc.stderr[-1000:]}")

    def number(label: str) -> float:
        match = re.search(rf"^{label}:\s+([\d.]+)", proc.stdout, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    by_percent: dict[int, float] = {}
    for line in percentiles.read_text().splitlines():
        if match := AB_PERCENTILE_LINE.match(line.strip()):
            by_percent[int(match.group(1))] = float(match.group(2))
    return LoadFigures(
        requests=int(number("Complete requests")),
        failures=int(number("Failed requests") + number("Non-2xx responses")),
        per_second=round(number("Requests per second"), 1),
        p50_ms=by_percent.get(50, 0.0),
        p99_ms=by_percent.get(99, 0.0),
    )


# --------------------------------------------------------------------- blob throughput


def curl_throughput(
    url: str, *, clients: int, gets: int, expected_size: int, timeout: float = 600
) -> float:
    """MB/s of ``clients`` curl processes at once, each GETting ``url`` ``gets`` times."""
    argv = ["curl", "--silent", "--location", "--write-out", "%{http_code} %{size_download}\n"]
    for _ in range(gets):
        argv += ["--output", "/dev/null", url]
    procs: list[subprocess.Popen[str]] = []
    try:
        started = time.monotonic()
        for _ in range(clients):
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            )
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
        wall = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    expected = [f"200 {expected_size}"] * gets
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0 or output.split("\n")[:gets] != expected:
            raise MeasureError(f"curl {url}: exit {proc.returncode}, got {output!r}")
    return round(clients * gets * expected_size / MB / wall, 1)


def status_without_redirects(url: str) -> int:
    """The status of a GET of ``url``, a redirect not followed."""
    proc = subprocess.run(
        ["curl", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return int(proc.stdout or 0)


# --------------------------------------------------------------------- clients that read nothing


@dataclass(frozen=True)
class IdleClientFigures:
    clients: int
    rss_before_mb: float
    peak_rss_mb: float
    answers: dict[str, int]  # first status line seen on each connection (peeked, not read)
    healthy_after: bool  # a new client was answered while they all hung on


def idle_clients(pid: int, port: int, path: str, count: int, settle: float) -> IdleClientFigures:
    """``count`` connections that each send ``GET path`` and never read a byte.

    Each server writes until the kernel buffers are full; what it holds beyond that is its own
    memory.  The peak is read once the RSS has stopped growing for a second (at most ``settle``
    seconds).  The answers are peeked (MSG_PEEK), so nothing is consumed.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    reset_peak_rss(pid)
    before = rss_mb(pid)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(request)
        _wait_for_steady_rss(pid, settle)
        peak = peak_rss_mb(pid)
        answers: Counter[str] = Counter()
        for sock in sockets:
            answers[_peek_status(sock)] += 1
        healthy = _answers(port, "/v2/")
    finally:
        for sock in sockets:
            sock.close()
    return IdleClientFigures(count, before, peak, dict(answers), healthy)


def _wait_for_steady_rss(pid: int, settle: float) -> None:
    history: list[tuple[float, float]] = []

    def steady() -> bool:
        now = time.monotonic()
        history.append((now, rss_mb(pid)))
        window = [rss for at, rss in history if at >= now - 1.0]
        return history[0][0] <= now - 1.0 and max(window) - min(window) < 1.0

    # Still growing after ``settle`` seconds: the peak so far is the figure, and says enough.
    with contextlib.suppress(TimeoutError):
        wait_for(steady, settle, interval=0.1, what="the server's RSS to stop growing")


def _peek_status(sock: socket.socket) -> str:
    sock.setblocking(False)
    try:
        head = sock.recv(12, socket.MSG_PEEK)
    except BlockingIOError:
        return "no answer yet"
    except OSError as exc:
        return type(exc).__name__
    if not head:
        return "closed"
    return head.decode(errors="replace").split(" ", 1)[-1].strip() or "?"


def _answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# --------------------------------------------------------------------- unfinished headers


@dataclass(frozen=True)
class HeaderFloodFigures:
    clients: int
    rss_before_mb: float
    peak_rss_mb: float
    rss_after_mb: float  # once they all left and the RSS stopped moving
    answers: dict[str, int]
    healthy_during: bool  # a new client was answered while they hung on


def header_flood(pid: int, port: int, count: int, size: int, settle: float) -> HeaderFloodFigures:
    """``count`` connections that each send a request line and ``size`` bytes of header lines,
    never the blank line that ends them, and then wait; then they all leave."""
    line = b"X-Pad: " + b"p" * 8000 + b"\r\n"
    reset_peak_rss(pid)
    before = rss_mb(pid)
    sockets: list[socket.socket] = []

    def flood(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the server may cut it off: that is the point
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: bench\r\n")
            for _ in range(size // len(line)):
                sock.sendall(line)

    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(flood, sockets))
        _wait_for_steady_rss(pid, settle)
        peak = peak_rss_mb(pid)
        healthy = _answers(port, "/v2/")
        answers: Counter[str] = Counter(_peek_status(sock) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    _wait_for_steady_rss(pid, settle)
    return HeaderFloodFigures(count, before, peak, rss_mb(pid), dict(answers), healthy)
