"""Crash recovery and upstream faults, end to end with the real proxy process.

* SIGKILL in the middle of 8 concurrent cold pulls of a multi-megabyte image, then a restart on
  the same cache: every later pull returns correct bytes, a scan of the whole cache finds no entry
  whose bytes do not match its digest (neither right after the crash nor after the new pulls),
  and the restart leaves no temporary file behind. For the filesystem cache and for S3 (moto).
* The upstream stopped, or hung (SIGSTOP): a cached tag still pulls with skopeo, served stale with
  a Warning; an uncached one fails, quickly, with the proxy's clean error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from support.cache_scan import ScanReport, scan_directory, scan_s3
from support.distribution import Distribution
from support.moto import CREDENTIALS, MotoServer, unique_bucket_name
from support.oci_image import (
    PushedImage,
    Skopeo,
    build_oci_layout,
    push_image,
    verify_dir_copy,
)
from support.token_server import TokenServer

from e2e.conftest import HUB_PASSWORD, HUB_USER, ProxyFactory

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

MiB = 1024 * 1024
BIG_REPOSITORY = "library/crashtest"
BIG_TAG = "big"
CONCURRENT_PULLS = 8
PULL_TIMEOUT = 180.0
KILL_POINT_TIMEOUT = 120.0
IN_FLIGHT_BYTES = 1 * MiB
S3_PREFIX = "cache"
# A failed upstream must not hold a client for long: connect 2 s, read 2 s, two retries.
FAULT_ENV = {
    "PROXY_TAG_TTL": "0",
    "PROXY_UPSTREAM_CONNECT_TIMEOUT": "2",
    "PROXY_UPSTREAM_READ_TIMEOUT": "2",
}
QUICK_FAILURE = 30.0


@pytest.fixture(scope="module")
def big_image(
    upstream_session: Distribution,
    token_server_session: TokenServer,
    skopeo: Skopeo,
    tmp_path_factory: pytest.TempPathFactory,
) -> PushedImage:
    """A 2-platform image of about 36 MB of blobs (a 12 MiB shared base layer, then 8 and 4 MiB
    per platform): big enough that 8 pulls through the proxy take seconds, not milliseconds."""
    token_server_session.start()
    upstream_session.start()
    layout = build_oci_layout(
        tmp_path_factory.mktemp("big-layout"),
        tags=("latest",),
        seed=66,
        base_layer_size=12 * MiB,
        platform_layer_sizes=(8 * MiB, 4 * MiB),
    )
    return push_image(
        skopeo,
        layout,
        upstream_session.host,
        BIG_REPOSITORY,
        BIG_TAG,
        username=HUB_USER,
        password=HUB_PASSWORD,
    )


# --- running skopeo in the background ----------------------------------------------------------


@dataclass
class Pull:
    out: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]


@contextmanager
def background_pulls(skopeo: Skopeo, reference: str, outs: list[Path]) -> Iterator[list[Pull]]:
    """Start one ``skopeo copy --all`` per output dir; kill whatever still runs on exit."""
    pulls: list[Pull] = []
    try:
        for out in outs:
            log = (out.parent / f"{out.name}.log").open("w+b")
            argv = skopeo.command(*skopeo.copy_args_to_dir(reference, out))
            process = subprocess.Popen(
                argv, env=skopeo.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            pulls.append(Pull(out, process, log))
        yield pulls
    finally:
        for pull in pulls:
            if pull.process.poll() is None:
                pull.process.kill()
            pull.process.wait(10)
            pull.log.close()


def wait_all(pulls: list[Pull], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pull in pulls:
        try:
            pull.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"skopeo pulls still running after {timeout} s") from None


def assert_all_succeeded(pulls: list[Pull], image: PushedImage) -> None:
    failures = [
        f"pull into {p.out.name} exited {p.process.returncode}:\n{p.output()}"
        for p in pulls
        if p.process.returncode != 0
    ]
    assert not failures, "\n".join(failures)
    for pull in pulls:
        verify_dir_copy(pull.out, image)


# --- the cache under test ------------------------------------------------------------------------


@dataclass
class CacheUnderTest:
    """Where a proxy keeps its cache, and how to scan it."""

    kind: str
    spool: Path
    scan: Callable[[], ScanReport]
    extra_env: dict[str, str]
    storage: str | None

    def spool_files(self) -> list[Path]:
        """Downloads in progress: the files of the spool's own subdirectory (not its marker)."""
        files = self.spool / "registry-proxy-spool"
        if not files.is_dir():
            return []
        return sorted(p for p in files.iterdir() if p.is_file() and p.name != ".registry-proxy")

    def transfer_in_flight(self) -> bool:
        """A download is half-way: some spool file holds at least IN_FLIGHT_BYTES."""
        sizes = []
        for path in self.spool_files():
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                continue  # finished and removed meanwhile
        return any(size >= IN_FLIGHT_BYTES for size in sizes)


@pytest.fixture(params=["filesystem", "s3"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> CacheUnderTest:
    if request.param == "filesystem":
        directory = tmp_path / "cache"
        return CacheUnderTest(
            "filesystem",
            directory / "spool",
            lambda: scan_directory(directory),
            {},
            str(directory),
        )
    moto: MotoServer = request.getfixturevalue("moto_endpoint")
    bucket = moto.create_bucket(unique_bucket_name("crash"))
    spool = tmp_path / "spool"
    return CacheUnderTest(
        "s3",
        spool,
        lambda: scan_s3(moto.client(), bucket, S3_PREFIX),
        {
            **CREDENTIALS,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PROXY_STORAGE": f"s3://{bucket}/{S3_PREFIX}",
            "PROXY_S3_ENDPOINT_URL": moto.endpoint_url,
            "PROXY_SPOOL_DIR": str(spool),
        },
        None,
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.01)


# --- SIGKILL mid-pull ----------------------------------------------------------------------------


def test_sigkill_during_concurrent_cold_pulls_then_restart(
    proxy_factory: ProxyFactory,
    upstream: Distribution,
    skopeo: Skopeo,
    big_image: PushedImage,
    cache: CacheUnderTest,
    tmp_path: Path,
) -> None:
    kwargs: dict[str, object] = {"extra_env": cache.extra_env}
    if cache.storage is not None:
        kwargs["storage"] = cache.storage
    proxy = proxy_factory(**kwargs)
    reference = f"{proxy.host}/{BIG_REPOSITORY}:{BIG_TAG}"
    mark = upstream.mark()

    first = [tmp_path / f"crashed-{i}" for i in range(CONCURRENT_PULLS)]
    with background_pulls(skopeo, reference, first) as pulls:

        def in_the_middle() -> bool:
            if all(p.process.poll() is not None for p in pulls):
                raise AssertionError(
                    "every pull ended before a transfer was seen in flight:\n"
                    + "\n".join(p.output() for p in pulls[:2])
                )
            return cache.transfer_in_flight()

        wait_until(in_the_middle, KILL_POINT_TIMEOUT, "a blob download is half-way")
        proxy.kill()
        wait_all(pulls, 60)
    assert proxy.returncode == -signal.SIGKILL
    assert any(p.process.returncode != 0 for p in pulls), "the crash interrupted no pull"
    upstream.sync()
    assert upstream.blob_gets(since=mark), "no blob was being fetched when the proxy died"

    # Right after the crash: partial writes lie around, but none is visible as a cache entry.
    crashed = cache.scan()
    assert crashed.problems == [], crashed.describe()
    leftovers = cache.spool_files()
    assert leftovers, "the crash left no partial download: it did not hit a transfer"
    uploads_at_crash = set(crashed.temp_files)

    proxy.start()
    assert cache.spool_files() == [], "the restart did not remove the crashed downloads"
    restarted = cache.scan()
    assert restarted.problems == [], restarted.describe()
    if cache.kind == "filesystem":
        assert restarted.temp_files == [], restarted.describe()
    else:
        # An S3 multipart upload of a killed process stays until the bucket's lifecycle rule
        # (AbortIncompleteMultipartUpload) removes it; it never becomes an object.
        assert set(restarted.temp_files) <= uploads_at_crash, restarted.describe()

    second = [tmp_path / f"after-{i}" for i in range(CONCURRENT_PULLS)]
    with background_pulls(skopeo, reference, second) as pulls:
        wait_all(pulls, PULL_TIMEOUT)
        assert_all_succeeded(pulls, big_image)

    wait_until(lambda: cache.spool_files() == [], 10, "the spool is empty")
    final = cache.scan()
    assert final.problems == [], final.describe()
    expected = set(big_image.blob_digests) | set(big_image.manifest_digests)
    assert expected <= final.digests, f"not cached: {sorted(expected - final.digests)}"
    if cache.kind == "filesystem":
        assert final.temp_files == [], final.describe()
    else:
        assert set(final.temp_files) <= uploads_at_crash, final.describe()


# --- upstream faults ------------------------------------------------------------------------------


def timed_pull(skopeo: Skopeo, reference: str, out: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    result = skopeo.run(*skopeo.copy_args_to_dir(reference, out), timeout=120, check=False)
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode, output, time.monotonic() - started


@contextmanager
def stopped(upstream: Distribution, how: str) -> Iterator[None]:
    """The upstream gone ("stop": connections refused) or hung ("hang": SIGSTOP, connections
    accepted by the kernel and never answered); back to normal on exit."""
    if how == "stop":
        upstream.stop()
        try:
            yield
        finally:
            upstream.start()
        return
    pid = upstream.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["stop", "hang"])
def test_upstream_down_cached_tag_pulls_uncached_fails_fast(
    proxy_factory: ProxyFactory,
    upstream: Distribution,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
    how: str,
) -> None:
    proxy = proxy_factory(extra_env=FAULT_ENV)
    cached = golang_images["oci"]
    skopeo.pull_to_dir(f"{proxy.host}/library/golang:oci", tmp_path / "warm", timeout=120)
    verify_dir_copy(tmp_path / "warm", cached)

    with stopped(upstream, how):
        code, output, elapsed = timed_pull(
            skopeo, f"{proxy.host}/library/golang:oci", tmp_path / "stale"
        )
        assert code == 0, output
        verify_dir_copy(tmp_path / "stale", cached)
        assert elapsed < QUICK_FAILURE, f"a stale pull took {elapsed:.1f} s"
        status, headers = proxy.head("/v2/library/golang/manifests/oci")
        assert status == 200
        assert headers["docker-content-digest"] == cached.index_digest
        assert "warning" in headers and "upstream" in headers["warning"]

        # Nothing cached under this tag (the blobs are, the manifests are not).
        code, output, elapsed = timed_pull(
            skopeo, f"{proxy.host}/library/golang:v2s2", tmp_path / "uncached"
        )
        assert code != 0, output
        assert elapsed < QUICK_FAILURE, f"the failing pull took {elapsed:.1f} s: {output}"
        status, _ = proxy.head("/v2/library/golang/manifests/v2s2")
        assert status == 503

    # The upstream is back: the uncached tag pulls again, the proxy needed no restart.
    skopeo.pull_to_dir(f"{proxy.host}/library/golang:v2s2", tmp_path / "back", timeout=120)
    verify_dir_copy(tmp_path / "back", golang_images["v2s2"])
    assert proxy.running
