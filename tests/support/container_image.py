"""The project's image, built from its Dockerfile without Docker and run as Fargate would run it.

No registry's ``python`` image is reachable here, so the Dockerfile's ``BASE_IMAGE`` is a base
made from Debian's own packages:

* ``debian_base_tarball``: ``debootstrap --variant=minbase`` of bookworm with ``python3-venv``
  and ``ca-certificates``, trimmed and packed as a tar. It takes a minute or two, so it is kept
  in a cache directory (``PROXY_TEST_CACHE_DIR``, default ``~/.cache/registry-proxy-tests``)
  under a name derived from its recipe; a new recipe makes a new one. The CA certificates the
  machine itself added (``/usr/local/share/ca-certificates``) are added to it, so that ``pip``
  in the build stage trusts what the machine trusts (networks that inspect TLS).
* ``Buildah``: buildah with its own vfs storage in a temporary directory, chroot isolation (no
  daemon, no user namespaces): imports the tarball as a local image and builds the Dockerfile
  on it.
* ``ContainerRun``: runs the built image's entry point the way a container runtime does, from
  the image's own configuration (entry point, command, environment, user, working directory):
  in a private mount namespace, on the image's root filesystem mounted read-only, with the
  given host directories bind-mounted (Fargate's bind mounts of ephemeral storage), a fresh
  ``/proc`` and a minimal ``/dev``, as the image's user. The network is the host's, so the
  proxy listens on loopback. Needs root (mounts, chroot), as CI has.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from support.binaries import stop_process
from support.cachedir import cache_dir

BASE_IMAGE = "localhost/registry-proxy-test-base:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3-venv", "python3-distutils", "ca-certificates")
# Bumped when the way the tarball is made changes, so an old cached one is not reused.
RECIPE_VERSION = "1"
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
# Nothing in the image needs these; leaving them out halves what buildah copies around.
TRIMMED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBOOTSTRAP_TIMEOUT = 900.0
BUILD_TIMEOUT = 900.0


def _extra_certificates() -> list[Path]:
    return sorted(EXTRA_CA_DIR.glob("*.crt")) if EXTRA_CA_DIR.is_dir() else []


def base_recipe(mirror: str) -> str:
    """Everything the tarball depends on; its hash names the cached file."""
    certificates = [hashlib.sha256(path.read_bytes()).hexdigest() for path in _extra_certificates()]
    return json.dumps(
        {
            "version": RECIPE_VERSION,
            "suite": SUITE,
            "mirror": mirror,
            "packages": PACKAGES,
            "trimmed": TRIMMED,
            "certificates": certificates,
        },
        sort_keys=True,
    )


def debian_base_tarball(workdir: Path, log: IO[str]) -> Path:
    """The cached base tarball, made first when there is none for the current recipe."""
    mirror = os.environ.get("PROXY_TEST_DEBIAN_MIRROR", DEFAULT_MIRROR)
    key = hashlib.sha256(base_recipe(mirror).encode()).hexdigest()[:16]
    target = cache_dir() / f"debian-{SUITE}-python-{key}.tar"
    if target.is_file():
        print(f"base: cached {target}", file=log, flush=True)
        return target
    root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=workdir))
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                mirror,
            ],
            log,
            DEBOOTSTRAP_TIMEOUT,
        )
        for relative in TRIMMED:
            for entry in (root / relative).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        certificates = _extra_certificates()
        if certificates:
            for path in certificates:
                shutil.copy2(path, root / "usr/local/share/ca-certificates" / path.name)
            _run(["chroot", str(root), "update-ca-certificates"], log, 120)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial-{os.getpid()}")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], log, 300)
        partial.rename(target)  # only a complete tarball ever has the cached name
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return target


def _run(argv: Sequence[str], log: IO[str], timeout: float, **kwargs: Any) -> str:
    """Run a command, its output to ``log``; raise with the output's tail when it fails."""
    print(f"$ {shlex.join(argv)}", file=log, flush=True)
    result = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    log.write(result.stdout + result.stderr)
    log.flush()
    output: str = result.stdout
    if result.returncode != 0:
        tail = "\n".join((output + result.stderr).splitlines()[-30:])
        raise RuntimeError(f"{shlex.join(argv)} exited with {result.returncode}:\n{tail}")
    return output


@dataclass
class Buildah:
    """buildah on a storage of its own (vfs) under ``workdir``."""

    workdir: Path
    log: IO[str]
    _env: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "storage.conf"
        conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'runroot = "{storage / "run"}"\n'
            f'graphroot = "{storage / "graph"}"\n'
        )
        registries = self.workdir / "registries.conf"
        registries.write_text("unqualified-search-registries = []\n")
        self._env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(conf),
            "CONTAINERS_REGISTRIES_CONF": str(registries),
            "BUILDAH_ISOLATION": "chroot",
            "TMPDIR": str(self.workdir),
        }

    def run(self, *args: str, timeout: float = 300.0) -> str:
        return _run(["buildah", *args], self.log, timeout, env=self._env).strip()

    def import_tarball(self, tarball: Path, name: str) -> None:
        container = self.run("from", "scratch")
        self.run("add", container, str(tarball), "/")
        self.run(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            container,
        )
        self.run("commit", "--quiet", container, name)
        self.run("rm", container)

    def build(self, context: Path, tag: str, build_args: Mapping[str, str]) -> None:
        arguments = [
            arg for name, value in build_args.items() for arg in ("--build-arg", f"{name}={value}")
        ]
        self.run(
            "bud",
            "--isolation",
            "chroot",
            "--layers=false",
            "--pull=never",
            *arguments,
            "--tag",
            tag,
            "--file",
            str(context / "Dockerfile"),
            str(context),
            timeout=BUILD_TIMEOUT,
        )

    def image_config(self, name: str) -> dict[str, Any]:
        """The image's OCI configuration: Entrypoint, Cmd, Env, User, WorkingDir, Volumes."""
        inspected = json.loads(self.run("inspect", "--type", "image", name))
        config: dict[str, Any] = inspected["OCIv1"]["config"]
        return config

    def root_filesystem(self, name: str) -> Path:
        """A container of ``name``, mounted: its root filesystem as a directory."""
        container = self.run("from", "--pull=never", name)
        return Path(self.run("mount", container))

    def remove_everything(self) -> None:
        """Unmount and delete every container and image of this storage, then the storage."""
        for command in (("umount", "--all"), ("rm", "--all"), ("rmi", "--all", "--force")):
            try:
                self.run(*command)
            except RuntimeError as exc:
                print(f"cleanup: {exc}", file=self.log, flush=True)
        shutil.rmtree(self.workdir / "storage", ignore_errors=True)


@dataclass(frozen=True)
class BuiltImage:
    """A built image: its configuration and its root filesystem on disk."""

    config: dict[str, Any]
    rootfs: Path

    @property
    def environment(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env", []))

    @property
    def volumes(self) -> list[str]:
        return sorted(self.config.get("Volumes") or {})

    @property
    def user(self) -> tuple[int, int]:
        """``User`` as numbers (the Dockerfile gives ``10001:10001``)."""
        user, _, group = str(self.config["User"]).partition(":")
        return int(user), int(group or user)

    @property
    def command(self) -> list[str]:
        return [*self.config.get("Entrypoint", []), *self.config.get("Cmd", [])]


class ContainerRun:
    """One run of the image's entry point, read-only root, ``mounts`` as {container path: host
    directory}. Output (stdout and stderr) goes to ``log_path``."""

    def __init__(
        self,
        image: BuiltImage,
        workdir: Path,
        *,
        mounts: Mapping[str, Path],
        environment: Mapping[str, str],
    ) -> None:
        self.image = image
        self.workdir = workdir
        self.mounts = dict(mounts)
        self.environment = {**image.environment, **environment}
        self.log_path = workdir / "container.log"
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def script(self, newroot: Path) -> str:
        """The shell steps a runtime takes before it starts the entry point."""
        uid, gid = self.image.user
        q = shlex.quote
        lines = [
            "set -eu",
            f"mount --bind {q(str(self.image.rootfs))} {q(str(newroot))}",
            f"mount -o remount,bind,ro {q(str(newroot))}",
        ]
        for target, source in sorted(self.mounts.items()):
            lines.append(f"mount --bind {q(str(source))} {q(str(newroot) + target)}")
        lines.append(f"mount -t proc proc {q(str(newroot / 'proc'))}")
        dev = newroot / "dev"
        lines.append(f"mount -t tmpfs -o mode=0755,size=1m tmpfs {q(str(dev))}")
        for node in ("null", "zero", "random", "urandom"):
            lines.append(f"touch {q(str(dev / node))}")
            lines.append(f"mount --bind /dev/{node} {q(str(dev / node))}")
        variables = [q(f"{name}={value}") for name, value in sorted(self.environment.items())]
        workdir = self.image.config.get("WorkingDir") or "/"
        run = [
            "exec env -i",
            *variables,
            f"unshare --root={q(str(newroot))} --wd={q(workdir)} --setuid {uid} --setgid {gid} --",
            *(q(arg) for arg in self.image.command),
        ]
        lines.append(" ".join(run))
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        newroot = Path(tempfile.mkdtemp(prefix="newroot-", dir=self.workdir))
        script = self.workdir / "run.sh"
        script.write_text(self.script(newroot))
        self._log = self.log_path.open("ab")
        # A private mount namespace: every mount above disappears with the process.
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", str(script)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        self.returncode = self._proc.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the image's STOPSIGNAL), SIGKILL after ``timeout`` seconds."""
        if self._proc is not None:
            self.returncode = stop_process(self._proc, timeout)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
