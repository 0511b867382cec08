"""Memory while streaming one big blob through registry-proxy (``--only memory``).

A ``registry-proxy serve`` process, an upstream that generates a 500 MB blob from a seeded PRNG as
it sends it (:mod:`.synthetic`), one client that GETs it through the proxy (cold: it streams from
the upstream into the cache and to the client at once) and then again (warm: from the cache).
Peak RSS is the kernel's ``VmHWM`` for the proxy process; for filesystem storage and for S3 on a
moto server.  It shows that the proxy's memory does not follow the blob's size, which the
side-by-side run (a 105 MB blob at most) cannot.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
from support.moto import CREDENTIALS, MotoServer
from support.proxy_process import ProxyProcess

from .procstat import MB, Sampler, proc_status
from .synthetic import CHUNK, StreamingUpstream, SyntheticBlob
from .testbed import moto_unavailable
from .text import table


def mb(value: float) -> float:
    return round(value / MB, 1)


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
        await asyncio.to_thread(proxy.start)
        assert proxy.pid is not None
        pid = proxy.pid
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
    reason = moto_unavailable()
    if reason is not None:
        print(f"memory: S3 run skipped: {reason}", flush=True)
        return results
    try:
        with MotoServer(workdir=workdir / "moto") as moto:
            results.append(await memory_run("s3", blob, workdir / "memory-s3", moto))
            print(f"memory: s3 done: {results[-1]}", flush=True)
    except Exception as exc:  # moto broken: report, keep the other figures
        print(f"memory: S3 run skipped: {exc!r}", flush=True)
    shutil.rmtree(workdir / "memory-s3", ignore_errors=True)
    return results


def report(runs: list[dict[str, Any]]) -> list[str]:
    """Print the table; return the failed "musts"."""
    failed = [f"memory/{r['storage']}: the blob did not verify" for r in runs if not r["verified"]]
    print("\nMemory: peak RSS while streaming one blob through registry-proxy")
    headers = ["storage", "blob MB", "idle RSS", "peak cold", "peak warm", "growth/blob"]
    headers += ["cold MB/s", "warm MB/s", "ok"]
    keys = ["storage", "blob_mb", "idle_rss_mb", "peak_rss_cold_mb", "peak_rss_warm_mb"]
    keys += ["growth_over_blob", "cold_mb_per_s", "warm_mb_per_s", "verified"]
    print(table(headers, [[r[k] for k in keys] for r in runs]))
    return failed
