"""A CodeBuild build, reproduced: the build container's dockerd and a buildspec run verbatim.

What CodeBuild does, and what :class:`BuildHost` does in its place:

* The build container starts dockerd from its entry point (``dockerd-entrypoint.sh``:
  ``dockerd --host=unix:///var/run/docker.sock --host=tcp://127.0.0.1:2375
  --storage-driver=overlay2`` in the background, then ``docker info`` until it answers), with no
  daemon.json and no mirror, before the buildspec's first command. Here the same command line
  starts dockerd (``/var/log/docker.log`` its output), with the chosen Docker's programs first on
  PATH (:mod:`support.docker_installs`).
* The buildspec's ``env.variables`` are exported, and its ``env.secrets-manager`` entries
  (``secret-id:json-key``) resolved from a stand-in for Secrets Manager (secret id -> the
  secret's string) as CodeBuild resolves them before the first phase, a missing secret or key
  failing the build; a project's variables override both, as CodeBuild's do. Then each phase's
  ``commands`` run in order, each in the same shell session;
  a failed command fails its phase; a failed ``install`` or ``pre_build`` ends the build, a
  failed ``build`` still runs ``post_build``; each phase's ``finally`` commands always run.

So that the buildspec's commands run verbatim, with their default paths (``/etc/docker``,
``/var/run/docker.sock``, ``/var/run/docker.pid``, ``/var/lib/docker``) and nothing on this machine
is touched, the whole build runs in a private mount namespace (``unshare --mount``) in which the
build host's own directories under ``workdir`` are bind-mounted on ``/run``, ``/etc/docker``,
``/var/lib``, ``/var/log`` and ``/etc/hosts`` (where the mirror's name resolves to the TLS
front), inside the network namespace of a :class:`support.build_network.BuildNetwork`, where
dockerd's bridge and iptables rules stay and nothing but the front is reachable. Every process
left in that mount namespace when the build ends is stopped by its pid.

The environment of the whole build (dockerd included) sends HTTP(S) to a closed port
(``HTTPS_PROXY=http://127.0.0.1:9``, nothing listens on the namespace's loopback), except to the
mirror's host (``NO_PROXY``): dockerd's silent fallback to Docker Hub fails loudly, on a machine
with or without Internet access.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support import markdown
from support.build_network import BuildNetwork
from support.docker_installs import DockerInstall

PHASES = ("install", "pre_build", "build", "post_build")
BUILD_TIMEOUT = 600.0
STOP_TIMEOUT = 30.0
CLOSED_PROXY = "http://127.0.0.1:9"
PHASE_MARK = re.compile(r"^::phase (\w+) exit=(\d+)$", re.MULTILINE)
AFTER_MARK = re.compile(r"^::after (\d+) exit=(\d+)$", re.MULTILINE)

# The build container: mounts, dockerd as CodeBuild's entry point starts it, the buildspec, and
# at the end whatever dockerd then runs (the set-up may have restarted it) stopped.
HOST_SCRIPT = r"""
set -euo pipefail
state="$1"
readlink /proc/self/ns/mnt >"$state/mntns"
mount --bind "$state/run" /run
mount --bind "$state/etc-docker" /etc/docker
mount --bind "$state/var-lib" /var/lib
mount --bind "$state/var-log" /var/log
mount --bind "$state/hosts" /etc/hosts

# dockerd-entrypoint.sh (with the variables a test gives dockerd alone, if any)
mapfile -t dockerd_env <"$state/dockerd.env"
env "${dockerd_env[@]}" dockerd --host=unix:///var/run/docker.sock --host=tcp://127.0.0.1:2375 \
  --storage-driver=overlay2 &>/var/log/docker.log &
tries=0
until docker info >/dev/null 2>&1; do
  if ((tries++ > 60)); then
    cat /var/log/docker.log
    echo "::dockerd did not start" >&2
    exit 97
  fi
  sleep 1
done
echo "::dockerd $(docker version --format '{{.Server.Version}}')"

set +e
(cd "$state/src" && bash "$state/phases.sh")
status=$?

# the build container goes away: stop the dockerd that runs now
if pid="$(cat /var/run/docker.pid 2>/dev/null)" && kill -TERM "$pid" 2>/dev/null; then
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
exit "$status"
"""


class SecretsError(Exception):
    """A ``secrets-manager`` entry CodeBuild cannot resolve: the build fails before any phase."""


def resolve_secrets(references: Mapping[str, str], store: Mapping[str, str]) -> dict[str, str]:
    """The buildspec's ``env.secrets-manager`` (``NAME: secret-id[:json-key[:stage[:id]]]``,
    the secret id a name or an ARN) resolved from ``store`` (secret id -> its string)."""
    resolved = {}
    for name, reference in references.items():
        fields = str(reference).split(":")
        split = 7 if reference.startswith("arn:") else 1  # an ARN holds six colons itself
        secret_id, rest = ":".join(fields[:split]), fields[split:]
        if secret_id not in store:
            raise SecretsError(f"{name}: Secrets Manager can't find the secret {secret_id!r}")
        value = store[secret_id]
        if rest and rest[0]:
            document = json.loads(value)
            if rest[0] not in document:
                raise SecretsError(f"{name}: the secret {secret_id!r} has no key {rest[0]!r}")
            value = str(document[rest[0]])
        resolved[name] = value
    return resolved


def phases_script(
    buildspec: Mapping[str, Any],
    project_names: Sequence[str],
    after: Sequence[str] = (),
    secrets: Mapping[str, str] | None = None,
) -> str:
    """The buildspec as one bash script with CodeBuild's semantics (see the module docstring).

    The buildspec's variables, and its resolved ``secrets``, are exported unless the project
    sets them (``project_names``: CodeBuild's project environment wins over the buildspec's).
    Each command is kept verbatim
    in a heredoc and ``source``d, so it runs in the build's one shell session; ``::phase NAME
    exit=N`` lines report each phase. ``after`` are the test's own commands, run in the same
    session once the build is over, whatever its outcome (``::after N exit=S`` each).
    """
    variables = {**buildspec.get("env", {}).get("variables", {}), **(secrets or {})}
    lines = [
        f"export {name}={shlex.quote(str(value))}"
        for name, value in variables.items()
        if name not in project_names
    ]
    lines.append("setup_failed=0; build_failed=0")
    for phase in PHASES:
        spec = buildspec.get("phases", {}).get(phase)
        if not spec:
            continue
        runs = "((build_failed == 0))" if phase != "post_build" else "((setup_failed == 0))"
        lines.append(f"phase_status=0; if {runs}; then")
        for index, command in enumerate(spec.get("commands", [])):
            marker = f"CMD_{phase}_{index}"
            lines += [
                f"  if ((phase_status == 0)); then echo {shlex.quote(f'::command {command}')}",
                f"    source /dev/stdin <<'{marker}'",
                str(command),
                marker,
                "    phase_status=$?",
                "  fi",
            ]
        for command in spec.get("finally", []):
            lines += ["  source /dev/stdin <<'FINALLY'", str(command), "FINALLY"]
        lines += [
            f"  echo ::phase {phase} exit=$phase_status",
            "  ((phase_status == 0)) || build_failed=1",
        ]
        if phase in ("install", "pre_build"):
            lines.append("  ((phase_status == 0)) || setup_failed=1")
        lines.append("fi")
    for index, command in enumerate(after):
        lines += [
            f"echo {shlex.quote(f'::command {command}')}",
            "source /dev/stdin <<'AFTER'",
            command,
            "AFTER",
            f"echo ::after {index} exit=$?",
        ]
    lines.append("exit $build_failed")
    return "\n".join(lines) + "\n"


@dataclass
class BuildResult:
    returncode: int
    output: str
    #: exit status of each phase that ran
    phases: dict[str, int]
    #: exit status of each of the test's own commands run after the build
    after: list[int]

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0

    def __str__(self) -> str:
        return f"build exited with {self.returncode}, phases {self.phases}:\n{self.output[-6000:]}"


class BuildHost:
    """One CodeBuild build container: a Docker install, a network, a source directory.

    ``hosts`` maps names to addresses for the container's /etc/hosts (the mirror's name to the
    front); ``no_proxy`` lists the hosts reached directly (the mirror's).
    """

    def __init__(
        self,
        workdir: Path,
        docker: DockerInstall,
        network: BuildNetwork,
        *,
        hosts: Mapping[str, str],
        no_proxy: Sequence[str],
    ) -> None:
        self.workdir = workdir
        self.docker = docker
        self.network = network
        self.hosts = dict(hosts)
        self.no_proxy = list(no_proxy)
        self.source = workdir / "src"
        for directory in ("run", "etc-docker", "var-lib", "var-log", "home", "src"):
            (workdir / directory).mkdir(parents=True, exist_ok=True)
        entries = [("127.0.0.1", "localhost"), *((a, n) for n, a in self.hosts.items())]
        (workdir / "hosts").write_text("".join(f"{a}\t{n}\n" for a, n in entries))
        if docker.plugins_dir is not None:
            plugins = workdir / "home" / ".docker" / "cli-plugins"
            plugins.mkdir(parents=True, exist_ok=True)
            for plugin in docker.plugins_dir.iterdir():
                target = plugins / plugin.name
                if not target.exists():
                    target.symlink_to(plugin)

    # --- what the build sees ----------------------------------------------------------------------

    @property
    def docker_log(self) -> Path:
        """/var/log/docker.log of the build container (dockerd's output)."""
        return self.workdir / "var-log" / "docker.log"

    @property
    def daemon_json(self) -> Path:
        return self.workdir / "etc-docker" / "daemon.json"

    @property
    def certs_d(self) -> Path:
        return self.workdir / "etc-docker" / "certs.d"

    def environment(self, project: Mapping[str, str]) -> dict[str, str]:
        """The build container's environment: CodeBuild's, the proxies that refuse, the
        project's variables (``project``)."""
        no_proxy = ",".join(["127.0.0.1", "localhost", *self.no_proxy])
        env = {
            "PATH": self.docker.path,
            "HOME": str(self.workdir / "home"),
            "LANG": "C.UTF-8",
            "CODEBUILD_SRC_DIR": str(self.source),
            "CODEBUILD_RESOLVED_SOURCE_VERSION": "0123456789abcdef",
            "CODEBUILD_BUILD_ID": "registry-proxy-test:1",
        }
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = CLOSED_PROXY
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        env.update(self.docker.build_env)
        env.update(project)
        return env

    # --- running a build --------------------------------------------------------------------------

    def run(
        self,
        buildspec: Path,
        *,
        project_env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        dockerd_env: Mapping[str, str] | None = None,
        after: Sequence[str] = (),
        timeout: float = BUILD_TIMEOUT,
    ) -> BuildResult:
        """Run ``buildspec`` as CodeBuild would. ``project_env`` is the project's environment
        (its ``environmentVariables``), which wins over the buildspec's; ``secrets`` stands in
        for Secrets Manager (secret id -> its string) for the buildspec's ``secrets-manager``
        entries (SecretsError when one cannot be resolved); ``dockerd_env`` is added to the
        entry point's dockerd alone; ``after`` are commands run in the build container once
        the build is over."""
        project_env = dict(project_env or {})
        spec = yaml.safe_load(buildspec.read_text())
        references = spec.get("env", {}).get("secrets-manager", {})
        resolved = resolve_secrets(references, secrets or {})
        script = phases_script(spec, list(project_env), after, resolved)
        (self.workdir / "phases.sh").write_text(script)
        (self.workdir / "dockerd.env").write_text(
            "".join(f"{name}={value}\n" for name, value in (dockerd_env or {}).items())
        )
        host_script = self.workdir / "host.sh"
        host_script.write_text(HOST_SCRIPT)
        argv = [
            "nsenter",
            f"--net={self.network.path}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            str(host_script),
            str(self.workdir),
        ]
        proc = subprocess.Popen(
            argv,
            env=self.environment(project_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop_everything()
            output, _ = proc.communicate(timeout=STOP_TIMEOUT)
            text = output.decode(errors="replace")
            raise TimeoutError(f"build did not end within {timeout} s:\n{text[-6000:]}") from None
        finally:
            self._stop_everything()
        text = output.decode(errors="replace")
        phases = {name: int(status) for name, status in PHASE_MARK.findall(text)}
        after_status = [int(status) for _, status in AFTER_MARK.findall(text)]
        return BuildResult(proc.returncode, text, phases, after_status)

    def _stop_everything(self) -> None:
        """Every process still in the build's mount namespace (dockerd, containerd, shims):
        SIGTERM, then SIGKILL; they are all the build's own. Once none is left the namespace is
        gone, and its id is forgotten (the kernel may give the number to another namespace)."""
        record = self.workdir / "mntns"
        try:
            namespace = record.read_text().strip()
        except OSError:
            return
        for signum, grace in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
            pids = _pids_in_mount_namespace(namespace)
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                pids = _pids_in_mount_namespace(namespace)
                time.sleep(0.1)
            if not pids:
                record.unlink(missing_ok=True)
                return

    def cleanup(self) -> None:
        """Stop what is left and remove the build container's directories."""
        self._stop_everything()
        shutil.rmtree(self.workdir / "var-lib", ignore_errors=True)

    # --- looking at the result --------------------------------------------------------------------

    def daemon_config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.daemon_json.read_text())
        return config


# ---------------------------------------------------------------------- the guide's account of it

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "codebuild.md"
TROUBLESHOOTING = "8. Troubleshooting"
SCRIPT_ERROR = re.compile(r"^use-registry-mirror: (?:error|warning): (.*)$", re.MULTILINE)


def script_error(output: str) -> str:
    """What the set-up script's last error (or warning) line in ``output`` says."""
    found = SCRIPT_ERROR.findall(output)
    assert found, f"no error from the set-up script in:\n{output[-3000:]}"
    return str(found[-1])


def troubleshooting(message: str) -> str:
    """docs/codebuild.md's troubleshooting entry for ``message``, a line the set-up script
    printed; fails when the guide has none."""
    entry = markdown.entry_for(markdown.section(GUIDE.read_text(), TROUBLESHOOTING), message)
    assert entry is not None, f"docs/codebuild.md's troubleshooting does not quote {message!r}"
    return entry


def _pids_in_mount_namespace(namespace: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == namespace:
                    pids.append(int(entry.name))
    return pids
