"""The two Docker generations a CodeBuild build meets, side by side on one machine.

* ``system_docker()``: the machine's own Debian bookworm ``docker.io`` 20.10 (older CodeBuild
  standard and Amazon Linux images): BuildKit only with ``DOCKER_BUILDKIT=1``, no buildx.
* ``trixie_docker()``: Debian trixie's ``docker.io`` 26, ``docker-cli`` 26 and ``docker-buildx``
  0.13 (CodeBuild standard:7.0 runs 23.0 with buildx 0.11: ``docker build`` is buildx, i.e.
  BuildKit). The .deb files come from the trixie suite of the Debian archive this machine's apt
  uses (``PROXY_TEST_DEBIAN_MIRROR`` overrides it), fetched with a private apt state (the
  system's package lists and packages are not touched) and unpacked with ``dpkg -x`` into the
  test cache (``support.cachedir``), once per machine: about 45 MB, a few seconds.

Both run with the system's containerd and runc.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from support.cachedir import cache_dir

TRIXIE_PACKAGES = ("docker.io", "docker-cli", "docker-buildx")
# Bumped when the way the prefix is made changes, so an old cached one is not reused.
RECIPE_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_TIMEOUT = 600.0
SYSTEM_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class DockerInstall:
    """Where one Docker's programs are, as a build host's PATH and plugin directory see them."""

    name: str
    #: Directories put first on PATH (dockerd, docker); the system's follow.
    bin_dirs: tuple[Path, ...]
    #: Directory of CLI plugins (docker-buildx), or None for a CLI without buildx.
    plugins_dir: Path | None
    #: Variables a build on this Docker needs to use BuildKit (CodeBuild users set them).
    build_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """PATH for the build host: this Docker first, then the system's directories only
        (not /usr/local/bin, where a machine may keep another docker CLI)."""
        return os.pathsep.join([*map(str, self.bin_dirs), *SYSTEM_PATH])

    def version(self) -> str:
        dockerd = shutil.which("dockerd", path=self.path)
        if dockerd is None:
            raise FileNotFoundError(f"no dockerd on {self.path}")
        out = subprocess.run(
            [dockerd, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return out.strip()


def system_docker() -> DockerInstall:
    """Debian bookworm's Docker 20.10 (/usr/sbin/dockerd, /usr/bin/docker)."""
    return DockerInstall(
        name="20.10",
        bin_dirs=(),
        plugins_dir=None,
        build_env={"DOCKER_BUILDKIT": "1"},
    )


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (``PROXY_TEST_DEBIAN_MIRROR`` overrides)."""
    configured = os.environ.get("PROXY_TEST_DEBIAN_MIRROR")
    if configured:
        return configured.rstrip("/")
    for source in APT_SOURCES:
        try:
            text = source.read_text()
        except OSError:
            continue
        # deb822 ("URIs: http://...") or one-line ("deb [opts] http://... suite main")
        for pattern in (r"(?m)^URIs:\s*(\S+)", r"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s"):
            for uri in re.findall(pattern, text):
                if "security" not in uri:
                    return str(uri).rstrip("/")
    return DEFAULT_MIRROR


def trixie_docker() -> DockerInstall:
    """Debian trixie's Docker 26 with buildx, unpacked in the test cache (made once)."""
    mirror = debian_mirror()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", mirror.split("://", 1)[-1]).strip("-")
    prefix = cache_dir() / f"docker-trixie-{RECIPE_VERSION}-{slug}"
    if not (prefix / "complete").is_file():
        _unpack_trixie_docker(prefix, mirror)
    return DockerInstall(
        name="26",
        bin_dirs=(prefix / "usr" / "bin", prefix / "usr" / "sbin"),
        plugins_dir=prefix / "usr" / "libexec" / "docker" / "cli-plugins",
    )


def _unpack_trixie_docker(prefix: Path, mirror: str) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="docker-trixie-", dir=prefix.parent))
    try:
        for directory in ("lists/partial", "cache/archives/partial", "debs", "prefix"):
            (work / directory).mkdir(parents=True)
        sources = work / "sources.list"
        sources.write_text(f"deb [signed-by={ARCHIVE_KEYRING}] {mirror} trixie main\n")
        options = [
            f"-oDir::Etc::SourceList={sources}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={work / 'lists'}",
            f"-oDir::Cache={work / 'cache'}",
            "-oDir::State::Status=/dev/null",
            "-oAPT::Sandbox::User=root",
        ]
        _apt(["apt-get", *options, "update"], work)
        _apt(["apt-get", *options, "download", *TRIXIE_PACKAGES], work / "debs")
        debs = sorted((work / "debs").glob("*.deb"))
        if len(debs) != len(TRIXIE_PACKAGES):
            raise RuntimeError(f"apt-get download gave {debs}, expected {TRIXIE_PACKAGES}")
        for deb in debs:
            _apt(["dpkg", "-x", str(deb), str(work / "prefix")], work)
        (work / "prefix" / "complete").write_text("".join(f"{deb.name}\n" for deb in debs))
        try:
            (work / "prefix").rename(prefix)
        except OSError:
            if not (prefix / "complete").is_file():  # not another run that got there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _apt(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
        )
