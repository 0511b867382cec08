"""The client snippets in docs/ are valid: shell passes shellcheck, config files parse, and the
mirror script really merges daemon.json, reloads dockerd and verifies the result.

Shell comes from three places: script files (docs/clients/*.sh), ```bash / ```sh blocks in the
Markdown guides, and the ``commands`` of buildspec files.  shellcheck (Debian package
``shellcheck``) and jq are needed; a missing one skips these tests visibly, or fails them when
``PROXY_TEST_REQUIRE_BINARIES=1`` (as in CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import markdown
from support.codebuild import TROUBLESHOOTING, script_error, troubleshooting
from support.paths import REPO

DOCS = REPO / "docs"
CLIENTS = DOCS / "clients"
MIRROR_SCRIPT = CLIENTS / "use-registry-mirror.sh"
BUILDKITD_TOML = CLIENTS / "buildkitd.toml"
BUILDSPEC = CLIENTS / "codebuild-buildspec.yml"
GUIDE = DOCS / "codebuild.md"
EXAMPLE_MIRROR = "https://registry.build.example.com"

REQUIRE_ENV = "PROXY_TEST_REQUIRE_BINARIES"
DEBIAN_PACKAGES = {"shellcheck": "shellcheck", "jq": "jq", "bash": "bash"}
SHELL_LANGUAGES = {"bash": "bash", "sh": "sh", "shell": "bash"}


def require(program: str) -> str:
    """Path of ``program``; skip when it is missing, or fail when binaries are required."""
    path = shutil.which(program)
    if path is not None:
        return path
    reason = f"{program} is not installed (Debian package: {DEBIAN_PACKAGES.get(program, program)})"
    if os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------- collecting snippets


@dataclass(frozen=True)
class Snippet:
    origin: str  # file:line, for messages
    language: str
    text: str


def markdown_files() -> list[Path]:
    files = sorted(DOCS.rglob("*.md"))
    infra_readme = REPO / "infra" / "README.md"
    if infra_readme.is_file():
        files.append(infra_readme)
    return files


def fenced_blocks(path: Path) -> list[Snippet]:
    return [
        Snippet(f"{path.relative_to(REPO)}:{block.line}", block.language, block.text)
        for block in markdown.blocks(path.read_text(encoding="utf-8"))
    ]


def buildspec_files() -> list[Path]:
    return sorted(CLIENTS.glob("*buildspec*.yml")) + sorted(CLIENTS.glob("*buildspec*.yaml"))


def buildspec_script(path: Path) -> Snippet:
    """All commands of a buildspec as one script: CodeBuild runs them in one shell session."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    shell = spec.get("env", {}).get("shell", "sh")
    lines = [f"# variables: {', '.join(spec.get('env', {}).get('variables', {}))}"]
    for name, phase in spec.get("phases", {}).items():
        lines.append(f"# phase {name}")
        for key in ("commands", "finally"):
            lines.extend(str(command) for command in phase.get(key, []))
    return Snippet(str(path.relative_to(REPO)), SHELL_LANGUAGES.get(shell, shell), "\n".join(lines))


def shell_snippets() -> list[Snippet]:
    snippets = [
        block
        for path in markdown_files()
        for block in fenced_blocks(path)
        if block.language in SHELL_LANGUAGES
    ]
    return snippets + [buildspec_script(path) for path in buildspec_files()]


# What a guide's block may do that a script may not: source a file that exists only where the
# reader runs it (a virtualenv's activate script: SC1091), and set a variable for a later block
# (SC2034; tests/infra/test_codebuild_guide.py runs the blocks in order, with `set -u`).
SNIPPET_EXCLUSIONS = ("SC1091", "SC2034")


def run_shellcheck(source: str, shell: str, origin: str, exclude: tuple[str, ...] = ()) -> None:
    shellcheck = require("shellcheck")
    excluded = ["--exclude", ",".join(exclude)] if exclude else []
    result = subprocess.run(
        [shellcheck, "--format=gcc", f"--shell={shell}", "--external-sources", *excluded, "-"],
        input=source,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"shellcheck on {origin}:\n{result.stdout}{result.stderr}"


# ---------------------------------------------------------------------------- shellcheck


SHEBANG = re.compile(r"^#!\s*(?:/usr/bin/env\s+)?(?:/\S*/)?(bash|sh|dash)\b")


@pytest.mark.parametrize("script", sorted(CLIENTS.glob("*.sh")), ids=lambda path: path.name)
def test_scripts_pass_shellcheck(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    shebang = SHEBANG.match(text)
    assert shebang is not None, f"{script} does not start with a bash or sh #! line"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    shell = "bash" if shebang.group(1) == "bash" else "sh"
    run_shellcheck(text, shell, str(script.relative_to(REPO)))


@pytest.mark.parametrize("snippet", shell_snippets(), ids=lambda snippet: snippet.origin)
def test_shell_snippets_pass_shellcheck(snippet: Snippet) -> None:
    shell = SHELL_LANGUAGES.get(snippet.language, snippet.language)
    run_shellcheck(snippet.text, shell, snippet.origin, SNIPPET_EXCLUSIONS)


def test_the_guides_have_shell_snippets() -> None:
    """Guard against the collector silently finding nothing (a changed fence style, say)."""
    origins = [snippet.origin for snippet in shell_snippets()]
    assert any(origin.startswith("docs/codebuild.md:") for origin in origins)
    assert any(origin.endswith(".yml") for origin in origins)


# ---------------------------------------------------------------------------- other snippets


def test_config_snippets_parse() -> None:
    blocks = [
        block
        for path in markdown_files()
        for block in fenced_blocks(path)
        if block.language in ("json", "toml", "yaml", "yml")
    ]
    for block in blocks:
        try:
            if block.language == "json":
                json.loads(block.text)
            elif block.language == "toml":
                tomllib.loads(block.text)
            else:
                yaml.safe_load(block.text)
        except (ValueError, yaml.YAMLError) as exc:
            pytest.fail(f"{block.origin}: {block.language} does not parse: {exc}")


def test_buildkitd_toml_mirrors_docker_hub() -> None:
    config = tomllib.loads(BUILDKITD_TOML.read_text(encoding="utf-8"))
    mirrors = config["registry"]["docker.io"]["mirrors"]
    # BuildKit wants a host (HTTPS is the default), not a URL
    assert mirrors == [EXAMPLE_MIRROR.removeprefix("https://")]


def test_buildspec_points_dockerd_at_the_mirror() -> None:
    spec = yaml.safe_load(BUILDSPEC.read_text(encoding="utf-8"))
    assert spec["version"] == 0.2
    assert spec["env"]["variables"]["REGISTRY_MIRROR"] == EXAMPLE_MIRROR
    commands = spec["phases"]["pre_build"]["commands"]
    assert commands[0] == 'bash docs/clients/use-registry-mirror.sh "$REGISTRY_MIRROR"'
    assert any(command.startswith("docker info") for command in commands)


def test_guide_names_only_files_that_exist() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"(?:docs|infra)/[\w./-]+\.(?:sh|yml|toml|md)", text))
    assert mentioned >= {
        "docs/clients/codebuild-buildspec.yml",
        "docs/clients/use-registry-mirror.sh",
        "docs/clients/buildkitd.toml",
    }
    missing = sorted(name for name in mentioned if not (REPO / name).is_file())
    assert missing == []


def test_guide_covers_the_explicit_form_and_the_vpc() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    assert "FROM registry.build.example.com/library/golang" in text
    assert "docker login" in text
    for topic in ("private subnets", "NAT", "security group", "DNS", "SIGHUP", "docker info"):
        assert topic in text, topic


# ---------------------------------------------------------------------------- the mirror script
#
# What the script does to a real dockerd, on both Docker generations, and its proof, are tested
# end to end (tests/e2e/test_codebuild.py). Here, in milliseconds, with stand-ins for dockerd,
# docker and curl: its settings, the daemon.json merge, the files it installs, and the mechanics
# of the restart (the same command line and environment) and of the SIGHUP.

FAKE_DOCKERD = """\
# Stands in for dockerd: "loads" daemon.json at start and on SIGHUP (copies it to the state
# file, with the marker variable it was started with), and writes its pid file.
load() { { cat "$1" 2>/dev/null; echo "marker=${FAKE_MARKER:-}"; } > "$2"; }
echo $$ > "$3"
trap 'load "$1" "$2"' HUP
load "$1" "$2"
echo ready
while :; do sleep 0.05; done
"""
# A dockerd that ignores SIGHUP (does not reload its configuration).
STUBBORN_DOCKERD = """\
echo $$ > "$3"
trap '' HUP
echo ready
while :; do sleep 0.05; done
"""
READY_TIMEOUT = 10.0

FAKE_DOCKER = """\
#!/usr/bin/env bash
# Stands in for the docker CLI: `docker info` answers; with --format it prints the mirrors the
# fake dockerd loaded, the way dockerd prints them (with a trailing slash).
[[ "${1:-}" == info ]] || exit 1
if [[ $# -gt 1 && -s "$FAKE_DOCKERD_STATE" ]]; then
  grep -v '^marker=' "$FAKE_DOCKERD_STATE" |
    jq -r '(.["registry-mirrors"] // [])[] | rtrimstr("/") + "/"'
fi
"""

FAKE_CURL = """\
#!/usr/bin/env bash
# Stands in for curl: records its arguments, fails as a mirror that cannot be reached does.
printf '%s\\n' "$@" > "$FAKE_CURL_ARGS"
echo "curl: (7) Failed to connect to the mirror" >&2
exit 7
"""


@dataclass
class FakeHost:
    root: Path
    env: dict[str, str]
    config: Path
    state: Path
    pidfile: Path
    dockerd: subprocess.Popen[bytes] | None = None

    def start_dockerd(self, *, reloads: bool = True, marker: str = "") -> None:
        script = FAKE_DOCKERD if reloads else STUBBORN_DOCKERD
        self.dockerd = subprocess.Popen(
            [
                require("bash"),
                "-c",
                script,
                "fake-dockerd",
                str(self.config),
                str(self.state),
                str(self.pidfile),
            ],
            stdout=subprocess.PIPE,
            env={**os.environ, "FAKE_MARKER": marker},
        )
        # Handshake: the script says "ready" once its trap is installed; a SIGHUP sent before
        # that would kill bash instead of reloading.
        assert self.dockerd.stdout is not None
        ready, _, _ = select.select([self.dockerd.stdout], [], [], READY_TIMEOUT)
        line = self.dockerd.stdout.readline() if ready else b""
        assert line == b"ready\n", f"fake dockerd not ready within {READY_TIMEOUT} s: {line!r}"

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [require("bash"), str(MIRROR_SCRIPT), *args],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def daemon_json(self) -> object:
        return json.loads(self.config.read_text())

    def loaded(self) -> tuple[object, str]:
        """What the fake dockerd running now loaded: daemon.json, and its marker variable."""
        lines = self.state.read_text().splitlines()
        return json.loads("\n".join(lines[:-1]) or "null"), lines[-1].removeprefix("marker=")

    def stop(self) -> None:
        """The fake dockerd, and the one the script may have started in its place."""
        pids = {self.dockerd.pid} if self.dockerd is not None else set()
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(self.pidfile.read_text()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.dockerd is not None:
            self.dockerd.wait(timeout=10)
            if self.dockerd.stdout is not None:
                self.dockerd.stdout.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    require("jq")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("curl", FAKE_CURL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    config = tmp_path / "etc" / "docker" / "daemon.json"
    state = tmp_path / "loaded.json"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path / "home"),
        "DOCKER_DAEMON_CONFIG": str(config),
        "DOCKER_CERTS_DIR": str(tmp_path / "etc" / "docker" / "certs.d"),
        "DOCKERD_PIDFILE": str(tmp_path / "docker.pid"),
        "DOCKERD_LOG": str(tmp_path / "dockerd.log"),
        "MIRROR_WAIT_SECONDS": "5",
        "MIRROR_RELOAD": "hup",
        "MIRROR_CHECK": "skip",
        "FAKE_DOCKERD_STATE": str(state),
        "FAKE_CURL_ARGS": str(tmp_path / "curl-args"),
    }
    fake = FakeHost(tmp_path, env, config, state, tmp_path / "docker.pid")
    yield fake
    fake.stop()


def test_script_creates_daemon_json_and_reloads_dockerd(host: FakeHost) -> None:
    host.start_dockerd()
    result = host.run(EXAMPLE_MIRROR + "/")
    assert result.returncode == 0, result.stderr
    assert host.daemon_json() == {"registry-mirrors": [EXAMPLE_MIRROR]}
    assert host.loaded()[0] == host.daemon_json(), "dockerd got no SIGHUP"
    assert f"dockerd lists {EXAMPLE_MIRROR} as its Docker Hub mirror" in result.stderr


def test_script_restarts_dockerd_with_its_command_line_and_environment(host: FakeHost) -> None:
    host.start_dockerd(marker="from-the-entry-point")
    first = host.pidfile.read_text()
    result = host.run(EXAMPLE_MIRROR, MIRROR_RELOAD="restart")
    assert result.returncode == 0, result.stderr
    assert "dockerd restarted: /usr/bin/bash -c" in result.stderr
    assert host.dockerd is not None and host.dockerd.wait(timeout=10) == -signal.SIGTERM
    assert host.pidfile.read_text() != first, "no new dockerd"
    # the new one read the merged daemon.json at start, with the old one's environment
    assert host.loaded() == ({"registry-mirrors": [EXAMPLE_MIRROR]}, "from-the-entry-point")


def test_script_merges_into_existing_settings_and_is_idempotent(host: FakeHost) -> None:
    host.config.parent.mkdir(parents=True)
    host.config.write_text(
        json.dumps(
            {
                "log-level": "warn",
                "insecure-registries": ["10.0.0.5:5000"],
                "registry-mirrors": ["https://mirror.gcr.io/", EXAMPLE_MIRROR + "/"],
            }
        )
    )
    host.start_dockerd()
    first = host.run(EXAMPLE_MIRROR)
    assert first.returncode == 0, first.stderr
    merged = {
        "log-level": "warn",
        "insecure-registries": ["10.0.0.5:5000"],
        "registry-mirrors": [EXAMPLE_MIRROR, "https://mirror.gcr.io"],
    }
    assert host.daemon_json() == merged
    second = host.run(REGISTRY_MIRROR=EXAMPLE_MIRROR)  # the URL from the environment this time
    assert second.returncode == 0, second.stderr
    assert host.daemon_json() == merged
    assert oct(host.config.stat().st_mode & 0o777) == oct(0o644)


def test_script_fails_when_the_mirror_cannot_be_reached(host: FakeHost) -> None:
    host.start_dockerd()
    result = host.run(EXAMPLE_MIRROR, MIRROR_CHECK="required")
    assert result.returncode == 1
    assert f"error: cannot reach {EXAMPLE_MIRROR}: curl: (7)" in result.stderr
    assert "REGISTRY_MIRROR" in troubleshooting(script_error(result.stderr))
    assert "MIRROR_CHECK=warn" in result.stderr
    probe = (host.root / "curl-args").read_text().splitlines()[-1]
    assert probe.startswith(f"{EXAMPLE_MIRROR}/v2/registry-proxy/probe/manifests/")


def test_script_only_warns_when_asked_to(host: FakeHost) -> None:
    host.start_dockerd()
    result = host.run(EXAMPLE_MIRROR, MIRROR_CHECK="warn")
    assert result.returncode == 0, result.stderr
    assert "warning: cannot reach" in result.stderr


def test_script_fails_when_dockerd_does_not_take_the_mirror(host: FakeHost) -> None:
    host.start_dockerd(reloads=False)
    result = host.run(EXAMPLE_MIRROR, MIRROR_WAIT_SECONDS="1")
    assert result.returncode == 1
    assert "does not list" in result.stderr
    assert "docker.log" in troubleshooting(script_error(result.stderr))


def test_script_installs_the_proxy_files_for_dockerd_and_buildkit(host: FakeHost) -> None:
    ca = host.root / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
    cert = "-----BEGIN CERTIFICATE-----\nclient\n-----END CERTIFICATE-----"
    key = "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----"
    host.start_dockerd()
    result = host.run(
        EXAMPLE_MIRROR,
        MIRROR_CA_FILE=str(ca),
        MIRROR_CLIENT_CERT=cert,
        MIRROR_CLIENT_KEY=key,
        MIRROR_CHECK="warn",
    )
    assert result.returncode == 0, result.stderr
    installed = host.root / "etc/docker/certs.d/registry.build.example.com"
    assert (installed / "ca.crt").read_text() == ca.read_text()
    assert (installed / "client.cert").read_text() == cert + "\n"
    assert (installed / "client.key").read_text() == key + "\n"
    assert oct((installed / "client.key").stat().st_mode & 0o777) == oct(0o600)
    # curl (the probe) used the same files
    args = (host.root / "curl-args").read_text().splitlines()
    for flag, name in (("--cacert", "ca.crt"), ("--cert", "client.cert"), ("--key", "client.key")):
        assert args[args.index(flag) + 1] == str(installed / name)
    buildkitd = host.root / "home/.docker/buildx/buildkitd.default.toml"
    config = tomllib.loads(buildkitd.read_text())
    assert config["registry"]["docker.io"]["mirrors"] == ["registry.build.example.com"]
    assert config["registry"]["registry.build.example.com"] == {
        "ca": [str(installed / "ca.crt")],
        "keypair": [{"key": str(installed / "client.key"), "cert": str(installed / "client.cert")}],
    }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"MIRROR_CHECK": "sometimes"}, "MIRROR_CHECK must be required, warn or skip"),
        ({"MIRROR_RELOAD": "later"}, "MIRROR_RELOAD must be restart or hup"),
        ({"MIRROR_WAIT_SECONDS": "soon"}, "MIRROR_WAIT_SECONDS must be a whole number"),
        ({"MIRROR_CLIENT_CERT": "not a pem", "MIRROR_CLIENT_KEY": "x"}, "MIRROR_CLIENT_CERT"),
        ({"MIRROR_CA_FILE": "/nonexistent/ca.pem"}, "MIRROR_CA_FILE"),
    ],
)
def test_script_names_a_bad_setting(host: FakeHost, setting: dict[str, str], message: str) -> None:
    result = host.run(EXAMPLE_MIRROR, **setting)
    assert result.returncode == 1
    assert message in result.stderr
    assert not host.config.exists(), "daemon.json written despite a bad setting"
    if "MIRROR_CLIENT_CERT" in setting:  # what a wrong secrets-manager block gives a build
        assert "secrets-manager" in troubleshooting(script_error(result.stderr))


@pytest.mark.parametrize(
    "url",
    ["http://registry.build.example.com", "https://registry.build.example.com/v2", "", "host"],
)
def test_script_refuses_anything_but_an_https_host(host: FakeHost, url: str) -> None:
    host.start_dockerd()
    result = host.run(url)
    assert result.returncode == 1
    assert not host.config.exists(), "daemon.json written despite a bad URL"
    if url:
        assert "REGISTRY_MIRROR" in troubleshooting(script_error(result.stderr))


def test_script_leaves_invalid_daemon_json_alone(host: FakeHost) -> None:
    host.config.parent.mkdir(parents=True)
    host.config.write_text("{not json")
    host.start_dockerd()
    result = host.run(EXAMPLE_MIRROR)
    assert result.returncode == 1
    assert host.config.read_text() == "{not json"
    assert list(host.config.parent.iterdir()) == [host.config], "temporary file left behind"


# The script's messages, rendered by bash from its own lines with sample values: every call of
# die or failed, a double-quoted string that ends its line.
MESSAGE_CALL = re.compile(r'\b(?:die|failed) ("(?:[^"\\]|\\.|"[^"]*")*")\s*(?:;;)?\s*$')
SAMPLES = {
    "mirror": EXAMPLE_MIRROR,
    "host": "registry.build.example.com",
    "probe_repository": "registry-proxy/probe",
    "pulled": "registry-proxy/probe:pull-0123abcd",
    "built": "registry-proxy/probe:build-0123abcd",
    "wait_seconds": "60",
    "reload": "restart",
    "headers": "curl: (0) what curl printed",
    "output": "what docker printed",
}


def script_messages() -> list[str]:
    calls = [
        match.group(1)
        for line in MIRROR_SCRIPT.read_text(encoding="utf-8").splitlines()
        if (match := MESSAGE_CALL.search(line))
    ]
    assert len(calls) >= 15, calls
    samples = "".join(f"{name}={shlex.quote(value)}\n" for name, value in SAMPLES.items())
    render = "".join(f"printf '%s\\0' {call}\n" for call in calls)
    result = subprocess.run(
        [require("bash"), "-c", samples + render], capture_output=True, text=True, check=True
    )
    return result.stdout.split("\0")[:-1]


def test_troubleshooting_quotes_only_what_the_script_prints() -> None:
    """Each message the guide's troubleshooting quotes is the start of one the script prints
    (what curl adds after "curl: (" comes from curl, and is checked end to end)."""
    messages = script_messages()
    quoted = markdown.quoted_messages(markdown.section(GUIDE.read_text(), TROUBLESHOOTING))
    assert len(quoted) >= 10, quoted
    for quote in quoted:
        own = quote.split(" curl: (")[0] + ("..." if " curl: (" in quote else "")
        pattern = markdown.message_pattern(own)
        assert any(pattern.match(message) for message in messages), (quote, messages)


def test_guide_documents_what_the_script_does() -> None:
    """The guide's account of the set-up step: the restart and why, the proof (a behaviour,
    not a configuration check), the settings, and the Docker versions it was tested with."""
    text = GUIDE.read_text(encoding="utf-8")
    script = MIRROR_SCRIPT.read_text(encoding="utf-8")
    for phrase in (
        "restarts dockerd",
        "registry-proxy/probe",
        "MIRROR_CHECK=warn",
        "MIRROR_RELOAD=hup",
    ):
        assert phrase in text, phrase
    for version in ("26.1.5", "buildx 0.13.1", "20.10.24"):
        assert version in text, version
    for variable in ("MIRROR_CLIENT_CERT", "MIRROR_CLIENT_KEY", "MIRROR_CA_FILE"):
        assert variable in text and f"{variable}:-" in script, variable


def test_buildspec_secrets_block_gives_the_script_its_certificate() -> None:
    """Outside a VPC the buildspec's secrets-manager block, uncommented, is valid and sets
    exactly the variables the script reads the client certificate from."""
    lines = BUILDSPEC.read_text(encoding="utf-8").splitlines()
    start = lines.index("  # secrets-manager:")
    block = [line.replace("# ", "", 1) for line in lines[start : start + 3]]
    spec = yaml.safe_load("\n".join(["env:", *block]))
    secrets = spec["env"]["secrets-manager"]
    assert secrets == {
        "MIRROR_CLIENT_CERT": "registry-proxy/clients/my-service:certificate",
        "MIRROR_CLIENT_KEY": "registry-proxy/clients/my-service:private_key",
    }
    guide = GUIDE.read_text(encoding="utf-8")
    assert all(f"{name}: {value}" in guide for name, value in secrets.items())
    # keys of the document `registry-proxy certs issue` writes (tests/unit/commands/test_certs.py)
    assert {value.rpartition(":")[2] for value in secrets.values()} == {
        "certificate",
        "private_key",
    }
