"""Profile registry-proxy on warm manifest requests: where a request's time goes.

    cd tests && python -m bench.profile [--method HEAD|GET] [--by tag|digest] [--tool pyspy]
    cd tests && python -m bench.profile --tool callgrind [--requests 3000]

A ``registry-proxy serve`` process in front of the fake Docker Hub (run in a thread of this
process), the image's manifests pulled once so that they are warm, then ``ab -k -c 32`` on one
manifest URL, as ``make bench`` measures it:

* ``pyspy`` (default): py-spy samples the server for the run; prints the functions that take the
  most samples, by own time and by total time, and writes the raw stacks (``--out``), which
  ``py-spy`` and speedscope read.  Wall-clock sampling: its shares move with the machine's load.
* ``callgrind``: the server runs under ``valgrind --tool=callgrind`` with instrumentation off
  until the warm-up is done; it counts the instructions of ``--requests`` requests, so the figure
  is *instructions per request*, which does not depend on what else the machine runs (about 50
  times slower than normal, so the request count is fixed, not the time).  ``--out`` is the
  callgrind file, for ``callgrind_annotate``.

The profile's figures are for comparing one build with another on this machine; speed figures
for the docs come from ``make bench`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from support.distribution import MANIFEST_ACCEPT
from support.fakehub import FakeHub, IndexInfo
from support.managed_process import ManagedProcess
from support.proxy_process import ProxyProcess, proxy_executable

from .bare_server import BareServer
from .measure import ab_load

REPOSITORY = "library/golang"
TAG = "profile"


class HubThread:
    """The fake Docker Hub on its own event loop in a thread, for the life of a ``with``."""

    def __init__(self) -> None:
        self.hub = FakeHub()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.hub.start(), self._loop).result(30)
        return self.hub

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.hub.close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


class UnderCallgrind(ManagedProcess):
    """A server run under callgrind, counting nothing until told to (mixed into a server)."""

    start_timeout = 300.0
    stop_timeout = 60.0
    out: Path

    def command(self) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out}",
            *self._python_command(),
        ]

    def _python_command(self) -> list[str]:
        raise NotImplementedError

    def instrument(self, on: bool) -> None:
        subprocess.run(
            ["callgrind_control", "-i", "on" if on else "off", str(self.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )


class CallgrindProxy(UnderCallgrind, ProxyProcess):
    def _python_command(self) -> list[str]:
        return [sys.executable, str(proxy_executable()), "serve"]


class CallgrindBare(UnderCallgrind, BareServer):
    def _python_command(self) -> list[str]:
        return BareServer.command(self)


def bare_content(hub: FakeHub, index: IndexInfo, directory: Path) -> Path:
    """The image as the bare server reads it (a skopeo ``dir:`` copy's manifests)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_bytes(index.manifest)
    for image in index.images:
        name = image.digest.removeprefix("sha256:") + ".manifest.json"
        (directory / name).write_bytes(image.manifest)
    return directory


def warm(url: str, paths: Sequence[str]) -> None:
    for path in paths:
        request = urllib.request.Request(url + path, headers={"Accept": MANIFEST_ACCEPT})
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()


@contextmanager
def py_spy(pid: int, out: Path) -> Iterator[None]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
    argv += ["--rate", "250", "--nonblocking"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches before the load starts
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
        _, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -2) and not out.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-1000:]}")


def top_functions(raw: Path, count: int) -> str:
    """The functions with the most samples in py-spy's collapsed stacks: own, and total."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        n = int(number)
        samples += n
        # "function (path/file.py:line)" -> "function (file.py)": one entry per function
        frames = [re.sub(r" \((?:.*/)?([^/]+?):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples", "", "own time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(count)]
    lines += ["", "total time (the function and what it calls):"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(count)]
    return "\n".join(lines)


def callgrind_total(out: Path) -> int:
    """The instructions counted (the file's ``totals:``; its ``summary:`` may say 0)."""
    counts = [
        int(line.split()[1])
        for line in out.read_text(errors="replace").splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    if not counts:
        raise RuntimeError(f"no totals in {out}")
    return max(counts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--method", choices=("HEAD", "GET"), default="HEAD")
    parser.add_argument("--by", choices=("tag", "digest"), default="tag")
    parser.add_argument("--tool", choices=("pyspy", "callgrind"), default="pyspy")
    parser.add_argument(
        "--server", choices=("ours", "bare"), default="ours", help="bare: the framework's limit"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="pyspy: the ab run")
    parser.add_argument("--requests", type=int, default=3000, help="callgrind: requests")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=40, help="pyspy: functions listed")
    parser.add_argument("--out", type=Path, default=None, help="raw stacks / callgrind file")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the proxy")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-profile-"))
    out = (args.out or workdir / f"profile.{args.tool}").resolve()
    extra = dict(item.split("=", 1) for item in args.env)
    try:
        with HubThread() as hub:
            index = hub.add_multiarch_image(REPOSITORY, TAG, oci=True)
            amd64 = index.images[0].digest
            paths = {"tag": f"/v2/{REPOSITORY}/manifests/{TAG}"}
            paths["digest"] = f"/v2/{REPOSITORY}/manifests/{amd64}"
            proxy: ProxyProcess | BareServer
            figures: object
            if args.server == "bare":
                content = bare_content(hub, index, workdir / "content")
                bare_class = CallgrindBare if args.tool == "callgrind" else BareServer
                proxy = bare_class(workdir / "bare", content, REPOSITORY, TAG)
            elif args.tool == "callgrind":
                proxy = CallgrindProxy(workdir / "proxy", hub.url)
            else:
                proxy = ProxyProcess(workdir / "proxy", hub.url)
            if isinstance(proxy, UnderCallgrind):
                proxy.out = out
            if isinstance(proxy, ProxyProcess):
                proxy.extra_env.update(extra)
            with proxy:
                warm(proxy.url, list(paths.values()))
                url = proxy.url + paths[args.by]
                if isinstance(proxy, UnderCallgrind):
                    # A few hundred requests first: caches, memo tables and allocator pools
                    # settle before anything is counted.
                    ab(url, args.method == "HEAD", args.connections, 300, workdir)
                    proxy.instrument(True)
                    figures = ab(
                        url, args.method == "HEAD", args.connections, args.requests, workdir
                    )
                    proxy.instrument(False)
                else:
                    assert proxy.pid is not None
                    with py_spy(proxy.pid, out):
                        figures = ab_load(
                            url,
                            head=args.method == "HEAD",
                            connections=args.connections,
                            seconds=args.seconds,
                            workdir=workdir,
                        )
            print(f"{args.method} by {args.by}: {figures}; load average {os.getloadavg()}")
            if isinstance(proxy, UnderCallgrind):
                total = callgrind_total(out)
                print(f"instructions: {total}, per request: {total / figures.requests:,.0f}")
            else:
                print(top_functions(out, args.top))
            print(f"profile: {out}")
    finally:
        shutil.rmtree(workdir / "proxy", ignore_errors=True)
    return 0


class Counted:
    def __init__(self, requests: int, failures: int) -> None:
        self.requests = requests
        self.failures = failures

    def __repr__(self) -> str:
        return f"{self.requests} requests, {self.failures} failed"


def ab(url: str, head: bool, connections: int, requests: int, workdir: Path) -> Counted:
    """``ab -k -n REQUESTS``: a fixed number of requests (a slow server under valgrind)."""
    argv = ["ab", "-q", "-k", "-r", "-c", str(connections), "-n", str(requests)]
    argv += ["-s", "300", "-H", f"Accept: {MANIFEST_ACCEPT}", *(["-i"] if head else []), url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ab exited with {proc.returncode}: {proc.stderr[-1000:]}")

    def number(label: str) -> int:
        match = re.search(rf"^{label}:\s+(\d+)", proc.stdout, re.MULTILINE)
        return int(match.group(1)) if match else 0

    failed = number("Failed requests") + number("Non-2xx responses")
    return Counted(number("Complete requests"), failed)


if __name__ == "__main__":
    raise SystemExit(main())
