"""What keeping the cache in bounds costs (section ``eviction``).

* A sweep over N cached blobs (10 000; 1 000 with ``--quick``): N small synthetic blobs are
  pulled through a proxy into a cache directory; the proxy stops; then ``cache gc --dry-run``
  and ``cache gc`` with ``PROXY_CACHE_EXPIRE_UNUSED=30d`` run on it (every blob was served
  moments ago, so the sweep looks at everything and deletes nothing): wall time and peak RSS
  of each.
* Cache hits per second with access recording on and off: ``ab -k -c 32`` GETs of one small
  cached blob.  Issue 11's target: within 5 %.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from support.proxy_process import ProxyProcess, proxy_executable

from .measure import MeasureError, ab_load
from .procstat import proc_status
from .results import Results, Row
from .synthetic import StreamingUpstream, SyntheticBlob

if TYPE_CHECKING:
    from .sidebyside import Config

RECORDING_SWITCH = "PROXY_CACHE_RECORD_ACCESS"
EXPIRE_SETTING = "PROXY_CACHE_EXPIRE_UNUSED"
BLOB_SIZE = 4096
FILL_CONCURRENCY = 16


def run(config: Config, workdir: Path, results: Results) -> None:
    asyncio.run(_measure(config, workdir, results, proxy_executable()))


async def _measure(config: Config, workdir: Path, results: Results, executable: Path) -> None:
    count = config.eviction_blobs
    print(f"eviction: making {count} blobs of {BLOB_SIZE} bytes ...", flush=True)
    blobs = [SyntheticBlob.make(seed, BLOB_SIZE) for seed in range(count)]
    cache = workdir / "cache"
    async with StreamingUpstream(blobs) as upstream:
        filler = ProxyProcess(workdir / "fill", upstream.url, storage=cache)
        await asyncio.to_thread(filler.start)
        try:
            await _fill(filler.url, blobs)
        finally:
            await asyncio.to_thread(filler.stop)
        settings = {**filler.environment(), EXPIRE_SETTING: "30d"}
        for label, args in (("gc --dry-run", ["--dry-run"]), ("gc", [])):
            argv = [str(executable), "cache", "gc", *args]
            results.start_measuring()
            wall, peak_mb = await asyncio.to_thread(_run_measured, argv, settings, workdir)
            key = label.replace(" --", "_").replace("-", "_")
            what = f"registry-proxy cache {label} over {count} cached blobs"
            results.add(Row(f"sweep_{key}_s", f"{what}: wall", "s", "lower"), "ours", wall)
            results.add(
                Row(f"sweep_{key}_rss", f"{what}: peak RSS", "MB", "lower"), "ours", peak_mb
            )
            print(f"eviction: {what}: {wall:.2f} s, {peak_mb} MB", flush=True)

        states = [("on", {}), ("off", {RECORDING_SWITCH: "false"})]
        url_path = f"/v2/library/small/blobs/{blobs[0].digest}"
        for state, extra in states:
            proxy = ProxyProcess(
                workdir / f"hits-{state}", upstream.url, storage=cache, extra_env=extra
            )
            await asyncio.to_thread(proxy.start)
            try:
                results.start_measuring()
                figures = await asyncio.to_thread(
                    ab_load,
                    proxy.url + url_path,
                    head=False,
                    connections=config.connections,
                    seconds=config.load_seconds,
                    workdir=workdir / "ab",
                )
            finally:
                await asyncio.to_thread(proxy.stop)
            title = f"cache hits (GET of a {BLOB_SIZE}-byte blob), access recording {state}"
            results.add(
                Row(f"hits_recording_{state}", title, "req/s", "higher"), "ours", figures.per_second
            )
            print(f"eviction: {title}: {figures}", flush=True)


async def _fill(base_url: str, blobs: Sequence[SyntheticBlob]) -> None:
    """GET every blob through the proxy, a few at a time, checking each one's size."""
    queue = list(blobs)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            blob = queue.pop()
            async with session.get(f"{base_url}/v2/library/small/blobs/{blob.digest}") as reply:
                body = await reply.read()
                if reply.status != 200 or len(body) != blob.size:
                    raise MeasureError(f"filling the cache: {blob.digest}: HTTP {reply.status}")

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(FILL_CONCURRENCY)))


def _run_measured(
    argv: Sequence[str], env: Mapping[str, str], workdir: Path, timeout: float = 600
) -> tuple[float, float]:
    """Run a command to its end: (wall seconds, its peak RSS in MB).

    The peak is the command's ``VmHWM``, read every 20 ms until it exits; the last reading
    counts (it only grows).  Not ``wait4``'s ``ru_maxrss``: Linux carries the peak of the
    forked image of this harness over ``exec``, so that figure would be ours, not the command's.
    """
    log = workdir / "cache-command.log"
    with log.open("ab") as output:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), env=dict(env), stdout=output, stderr=subprocess.STDOUT)
        peak = 0
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    raise MeasureError(f"{' '.join(argv)} did not finish within {timeout} s")
                with contextlib.suppress(OSError, KeyError):  # gone, or a zombie already
                    peak = proc_status(proc.pid)["VmHWM"]
                time.sleep(0.02)  # the sampling interval
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        wall = time.monotonic() - started
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise MeasureError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
    return wall, round(peak / 1e6, 1)
