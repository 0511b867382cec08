"""Real container clients for the end-to-end tests, pointed at the proxy on loopback.

* The client configuration files users install (``docs/clients``: ``daemon.json``,
  ``containerd-hosts.toml``, ``registries.conf``) are read from the repository and rendered for
  the proxy under test: the placeholder ``https://registry.build.example.com`` becomes
  ``http://127.0.0.1:PORT`` (see :func:`render_for_proxy`).  A placeholder missing from a file
  is an error, so the documented files and the tested files cannot drift apart.
* :class:`Containerd` and :class:`Dockerd` run the daemons with their own root, state, exec
  root and sockets (the machine's own daemons and their state are left alone; only the runc
  shims' sockets land in /run/containerd/s, named by a hash that includes our socket path),
  and stop them by pid with bounded waits.  Sockets live in short /tmp/rp-* directories,
  as unix socket paths are limited to 107 bytes.
* :class:`ContainerTools` runs podman and buildah with their own registries.conf, storage
  (vfs driver), containers.conf, auth file and signature policy under a temp dir.  (Run as
  root, they still share containers/image's blob-info cache in /var/lib/containers/cache with
  skopeo: no setting moves it.  It only records where blobs were seen.)

No client must reach a registry other than the proxy: Docker and containerd fall back to the
real upstream (registry-1.docker.io) when a mirror fails, and podman/buildah try the
``docker.io`` location after the mirror.  :func:`isolated_env` therefore gives every client
process (and the daemons) ``HTTP(S)_PROXY`` pointing at a :class:`ClosedPort`, a loopback port
held bound but never listening: every connection to a non-loopback registry is refused at once,
so a silent fallback becomes a loud failure on any machine, with or without Internet access.
Loopback (the proxy) is never proxied.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from support.binaries import run_program, wait_for
from support.managed_process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_CLIENTS = REPO_ROOT / "docs" / "clients"
PLACEHOLDER_HOST = "registry.build.example.com"
PLACEHOLDER_URL = f"https://{PLACEHOLDER_HOST}"
DEBIAN_DOCKER_CLI = Path("/usr/bin/docker")
COMMAND_TIMEOUT = 120.0

# Variables of the test runner's environment that would change what a client does.
_DROPPED_PREFIXES = ("DOCKER_", "CONTAINERS_", "BUILDAH_", "BUILDKIT_", "PODMAN_", "CONTAINERD_")
_DROPPED_NAMES = frozenset(
    {
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    }
)


class ClientError(RuntimeError):
    """A client program failed or timed out; the message carries its output."""


# ---------------------------------------------------------------------- environment


class ClosedPort:
    """A loopback TCP port bound but never listening: connecting to it is refused at once,
    and nothing else can take the port while this object holds it."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ClosedPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def isolated_env(closed: ClosedPort, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The runner's environment without client settings, every outgoing HTTP(S) connection
    but loopback sent to ``closed`` (refused), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_DROPPED_PREFIXES) and k not in _DROPPED_NAMES
    }
    no_proxy = "127.0.0.1,localhost,::1"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = closed.url
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    env.update(extra or {})
    return env


def port_outside_ephemeral_range() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A daemon configured once (dockerd reads its mirrors at start) needs the proxy at the same
    port for every test; a port outside the ephemeral range cannot be taken in between as the
    source port of some outgoing connection.
    """
    low = 32768
    with suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(max(1025, low - 12000), low))
    rng = secrets.SystemRandom()
    rng.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found below {low}")


def docker_storage_driver() -> str:
    """overlay2 where the kernel has overlayfs (it does on the project's machines), else vfs."""
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        return "vfs"
    return "overlay2" if re.search(r"\boverlay$", filesystems, re.MULTILINE) else "vfs"


def short_runtime_dir(prefix: str) -> Path:
    """A fresh directory with a short path for unix sockets (at most 107 bytes per path)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---------------------------------------------------------------------- running programs


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float = COMMAND_TIMEOUT,
    check: bool = True,
    cwd: Path | None = None,
    context: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with a timeout; on failure (when ``check``) raise ClientError with the
    program's output and ``context`` (e.g. a daemon's log tail)."""
    return run_program(
        argv,
        env=env,
        timeout=timeout,
        text=True,
        check=check,
        cwd=cwd,
        context=context,
        error=ClientError,
    )


def _pids_with_argument(argument: str) -> list[int]:
    """Pids of processes with ``argument`` among their command-line arguments."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in args:
            pids.append(int(entry.name))
    return pids


def _kill_pids(pids: Sequence[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with suppress(TimeoutError):
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
            timeout,
            what="killed processes to exit",
        )


def unmount_under(*roots: Path) -> None:
    """Lazily unmount whatever is still mounted below ``roots`` (deepest first)."""
    prefixes = [str(root.resolve()) for root in roots]
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        with suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=10, check=False)


def _unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def unix_http_get(path: Path, target: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``target`` from an HTTP server on a unix socket (the Docker API)."""
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------- client configuration


def client_config_text(name: str) -> str:
    """A file from docs/clients, as users get it."""
    return (DOCS_CLIENTS / name).read_text()


def render_for_proxy(text: str, proxy_host: str) -> str:
    """Point a docs/clients file at a plain-http proxy at ``proxy_host`` (127.0.0.1:PORT)."""
    if PLACEHOLDER_HOST not in text:
        raise ValueError(f"the placeholder {PLACEHOLDER_HOST!r} is missing")
    return text.replace(PLACEHOLDER_URL, f"http://{proxy_host}").replace(
        PLACEHOLDER_HOST, proxy_host
    )


def docker_daemon_config(proxy_host: str, testbed: Mapping[str, Any]) -> dict[str, Any]:
    """docs/clients/daemon.json for the proxy at ``proxy_host``, merged with ``testbed``
    (settings this machine needs, e.g. no iptables); the file's own keys win."""
    users = json.loads(render_for_proxy(client_config_text("daemon.json"), proxy_host))
    if not isinstance(users, dict):
        raise ValueError("daemon.json is not a JSON object")
    return {**testbed, **users}


def write_containerd_hosts_dir(directory: Path, proxy_host: str) -> Path:
    """``DIRECTORY/docker.io/hosts.toml`` from docs/clients/containerd-hosts.toml; returns
    DIRECTORY (for ``ctr images pull --hosts-dir``)."""
    target = directory / "docker.io" / "hosts.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_for_proxy(client_config_text("containerd-hosts.toml"), proxy_host))
    return directory


def registries_conf(proxy_host: str) -> str:
    """docs/clients/registries.conf for a plain-http proxy at ``proxy_host``: the placeholder
    replaced, and ``insecure = false`` (the documented HTTPS setting) turned to true."""
    text = render_for_proxy(client_config_text("registries.conf"), proxy_host)
    text, count = re.subn(r"(?m)^insecure = false$", "insecure = true", text)
    if count == 0:
        raise ValueError("registries.conf has no 'insecure = false' line to switch for http")
    return text


# ---------------------------------------------------------------------- containerd


class Containerd(ManagedProcess):
    """``containerd`` with its own root, state and sockets; ``ctr`` against it."""

    name = "containerd"
    stop_timeout = 20.0
    ready_interval = 0.1

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        *,
        binary: str = "containerd",
        ctr_binary: str = "ctr",
    ) -> None:
        super().__init__(workdir, workdir / "containerd.log")
        self.env = dict(env)
        self.binary = binary
        self.ctr_binary = ctr_binary
        self.rundir = short_runtime_dir("rp-ctd-")
        self.root = workdir / "root"
        self.state = self.rundir / "state"
        self.socket = self.rundir / "containerd.sock"
        self.config_path = workdir / "config.toml"
        self.log_path = self.stdout_path

    def config_text(self) -> str:
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.root}"',
                f'state = "{self.state}"',
                "[grpc]",
                f'  address = "{self.socket}"',
                "[ttrpc]",
                f'  address = "{self.socket}.ttrpc"',
                "[debug]",
                '  address = ""',
                "[metrics]",
                '  address = ""',
                '[plugins."io.containerd.grpc.v1.cri"]',
                "  disable_tcp_service = true",
                "",
            ]
        )

    def command(self) -> list[str]:
        return [self.binary, "--config", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        return self.env

    def prepare(self) -> None:
        self.config_path.write_text(self.config_text())

    def readiness(self) -> str | None:
        return None if _unix_socket_answers(self.socket) else f"no answer on {self.socket}"

    def failure(self, message: str) -> Exception:
        return ClientError(message)

    def start(self, timeout: float | None = None) -> None:
        if self.running:
            return
        super().start(timeout)
        try:
            self.ctr("version", timeout=20)
        except BaseException:
            self.stop()
            raise

    def cleanup(self) -> None:
        """Any runc shim containerd left behind, then what is still mounted, then the run dir."""
        # shims outlive containerd by design; ours name our socket on their command line
        _kill_pids(_pids_with_argument(str(self.socket)))
        unmount_under(self.root, self.rundir)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def ctr(
        self,
        *args: str,
        namespace: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.ctr_binary, "--address", str(self.socket)]
        if namespace is not None:
            argv += ["--namespace", namespace]
        return run(
            [*argv, *args],
            env=env if env is not None else self.env,
            timeout=timeout,
            check=check,
            context=self.log_tail(),
        )


# ---------------------------------------------------------------------- dockerd


class Dockerd(ManagedProcess):
    """``dockerd`` with its own data root, exec root and socket, on a :class:`Containerd`;
    the Debian ``docker`` CLI against it with an empty client configuration."""

    name = "dockerd"
    start_timeout = 60.0
    stop_timeout = 30.0
    ready_interval = 0.1

    def __init__(
        self,
        workdir: Path,
        containerd: Containerd,
        config: Mapping[str, Any],
        env: Mapping[str, str],
        *,
        binary: str = "dockerd",
        cli: str = "docker",
    ) -> None:
        super().__init__(workdir, workdir / "dockerd.log")
        self.containerd = containerd
        self.config = dict(config)
        self.env = dict(env)
        self.binary = binary
        self.cli = cli
        self.rundir = short_runtime_dir("rp-dkd-")
        self.data_root = workdir / "data"
        self.exec_root = self.rundir / "exec"
        self.pidfile = self.rundir / "dockerd.pid"
        self.socket = self.rundir / "docker.sock"
        self.config_path = workdir / "daemon.json"
        self.client_config = workdir / "client-config"
        self.log_path = self.stdout_path
        self.client_config.mkdir(exist_ok=True)
        (self.client_config / "config.json").write_text("{}\n")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--config-file",
            str(self.config_path),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "--host",
            self.host,
            "--containerd",
            str(self.containerd.socket),
        ]

    def environment(self) -> dict[str, str]:
        return self.env

    def prepare(self) -> None:
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")

    def readiness(self) -> str | None:
        try:
            status, body = unix_http_get(self.socket, "/_ping", timeout=2.0)
        except OSError as exc:
            return f"GET /_ping on {self.socket}: {exc!r}"
        return None if status == 200 and body == b"OK" else f"GET /_ping: HTTP {status}"

    def failure(self, message: str) -> Exception:
        return ClientError(message)

    def cleanup(self) -> None:
        unmount_under(self.data_root, self.rundir)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        status, body = unix_http_get(self.socket, "/info", timeout=10.0)
        if status != 200:
            raise ClientError(f"GET /info: HTTP {status} {body[:200]!r}")
        info: dict[str, Any] = json.loads(body)
        return info

    def cli_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(self.env)
        env["DOCKER_HOST"] = self.host
        env["DOCKER_CONFIG"] = str(self.client_config)
        env.update(extra or {})
        return env

    def docker(
        self,
        *args: str,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; ``env`` adds variables (e.g. DOCKER_BUILDKIT)."""
        return run(
            [self.cli, *args],
            env=self.cli_env(env),
            timeout=timeout,
            check=check,
            cwd=cwd,
            context=self.log_tail(),
        )

    def reset(self) -> None:
        """Remove every container, image and build cache entry: the next pull is cold."""
        containers = self.docker("ps", "--all", "--quiet").stdout.split()
        if containers:
            self.docker("rm", "--force", "--volumes", *containers)
        self.docker("image", "prune", "--all", "--force")
        self.docker("builder", "prune", "--all", "--force")
        left = self.docker("images", "--all", "--quiet").stdout.split()
        if left:
            raise ClientError(f"images left after reset: {left}")

    def log_position(self) -> int:
        """The log's current size: pass it to :meth:`log_since`."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, position: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(position)
            return log.read().decode(errors="replace")


# ---------------------------------------------------------------------- podman and buildah


class ContainerTools:
    """podman and/or buildah with their own configuration and vfs storage under ``workdir``.

    ``podman`` / ``buildah`` are the programs' paths; None for a program a test does not use.
    """

    def __init__(
        self,
        workdir: Path,
        registries: str,
        env: Mapping[str, str],
        *,
        podman: str | None = None,
        buildah: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.podman_binary = podman
        self.buildah_binary = buildah
        workdir.mkdir(parents=True, exist_ok=True)
        self.registries_conf = workdir / "registries.conf"
        self.storage_conf = workdir / "storage.conf"
        self.containers_conf = workdir / "containers.conf"
        self.policy = workdir / "policy.json"
        self.auth_file = workdir / "auth.json"
        self.runroot = short_runtime_dir("rp-ctr-")
        self.graphroot = workdir / "storage"
        tmpdir = workdir / "tmp"
        tmpdir.mkdir(exist_ok=True)
        self.registries_conf.write_text(registries)
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'runroot = "{self.runroot}"\n'
            f'graphroot = "{self.graphroot}"\n'
        )
        self.containers_conf.write_text(
            "[engine]\n"
            f'tmp_dir = "{self.runroot / "libpod"}"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{workdir / "events.log"}"\n'
            "[network]\n"
            f'network_config_dir = "{workdir / "networks"}"\n'
        )
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.auth_file.write_text('{"auths": {}}\n')
        self.env = dict(env)
        self.env.update(
            {
                "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
                "CONTAINERS_CONF": str(self.containers_conf),
                "REGISTRY_AUTH_FILE": str(self.auth_file),
                "TMPDIR": str(tmpdir),
            }
        )

    def podman(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if self.podman_binary is None:
            raise ClientError("this ContainerTools was made without podman")
        return run([self.podman_binary, *args], env=self.env, timeout=timeout, check=check)

    def buildah(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if self.buildah_binary is None:
            raise ClientError("this ContainerTools was made without buildah")
        return run([self.buildah_binary, *args], env=self.env, timeout=timeout, check=check)

    def pull(self, reference: str) -> subprocess.CompletedProcess[str]:
        """``podman pull REFERENCE``."""
        return self.podman("pull", "--signature-policy", str(self.policy), reference)

    def repo_digests(self, reference: str) -> list[str]:
        out = self.podman("image", "inspect", "--format", "{{json .RepoDigests}}", reference)
        digests: list[str] = json.loads(out.stdout)
        return digests

    def bud(self, context: Path, tag: str) -> subprocess.CompletedProcess[str]:
        """``buildah bud --isolation chroot`` (the only isolation that works here)."""
        return self.buildah(
            "bud",
            "--signature-policy",
            str(self.policy),
            "--isolation",
            "chroot",
            "--tag",
            tag,
            str(context),
        )

    def labels(self, image: str) -> dict[str, str]:
        """The image config's labels (``buildah inspect``)."""
        out = self.buildah("inspect", "--type", "image", image)
        labels: dict[str, str] = json.loads(out.stdout)["OCIv1"]["config"].get("Labels") or {}
        return labels

    def read_file(self, image: str, path: str) -> bytes:
        """A file's content in a local image, read from a mounted buildah working container."""
        container = self.buildah(
            "from", "--pull=never", "--signature-policy", str(self.policy), image
        ).stdout.strip()
        try:
            mountpoint = Path(self.buildah("mount", container).stdout.strip())
            try:
                return (mountpoint / path.lstrip("/")).read_bytes()
            finally:
                self.buildah("umount", container, check=False)
        finally:
            self.buildah("rm", container, check=False)

    def close(self) -> None:
        """Remove working containers and images, unmount leftovers, delete the run root."""
        if self.buildah_binary is not None:
            self.buildah("rm", "--all", check=False, timeout=60)
            self.buildah("rmi", "--all", "--force", check=False, timeout=60)
        if self.podman_binary is not None:
            self.podman("rmi", "--all", "--force", check=False, timeout=60)
        unmount_under(self.graphroot, self.runroot)
        shutil.rmtree(self.runroot, ignore_errors=True)
