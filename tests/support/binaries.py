"""Locating the real programs the end-to-end tests run, running them bounded, picking free ports.

A missing program skips the test with a reason that names the program and the Debian package
that provides it.  CI sets ``PROXY_TEST_REQUIRE_BINARIES=1``: there a missing program fails the
test instead, so a broken install step cannot hide behind a row of skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Literal, overload

import pytest

REQUIRE_ENV = "PROXY_TEST_REQUIRE_BINARIES"

# program name -> Debian package that installs it
DEBIAN_PACKAGES: dict[str, str] = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "busybox": "busybox-static",
    "htpasswd": "apache2-utils",
    "ab": "apache2-utils",
    "curl": "curl",
    "jq": "jq",
    "containerd": "containerd",
    "ctr": "containerd",
    "dockerd": "docker.io",
    "docker": "docker.io",
    "podman": "podman",
    "buildah": "buildah",
    "umoci": "umoci",
    "mount": "mount",
    "umount": "mount",
    "chromium": "chromium",
    "debootstrap": "debootstrap",
    "docker-compose": "docker-compose",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "runc": "runc",
}


def binaries_required() -> bool:
    """True when a missing program must fail the test run (CI) rather than skip."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes"}


def missing_binaries(*names: str) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


def require_binaries(*names: str) -> dict[str, str]:
    """Return ``{name: absolute path}`` for each program, or skip/fail the calling test.

    Call it from a test or a fixture.  Skips with a visible reason; fails instead when
    ``PROXY_TEST_REQUIRE_BINARIES=1``.
    """
    missing = missing_binaries(*names)
    if missing:
        parts = [
            f"{name!r} (Debian package: {DEBIAN_PACKAGES.get(name, 'unknown')})" for name in missing
        ]
        packages = sorted({DEBIAN_PACKAGES[name] for name in missing if name in DEBIAN_PACKAGES})
        hint = f"; install with: apt-get install -y {' '.join(packages)}" if packages else ""
        reason = f"missing program(s) on PATH: {', '.join(parts)}{hint}"
        if binaries_required():
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1 makes this a failure)", pytrace=False)
        pytest.skip(reason)
    found: dict[str, str] = {}
    for name in names:
        path = shutil.which(name)
        assert path is not None
        found[name] = path
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll ``condition`` until it is true; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or condition!r}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """Stop a server we started, by its pid: SIGTERM, SIGKILL after ``timeout`` seconds.

    Returns the exit code (None when there was no process).
    """
    if proc is None:
        return None
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
    return proc.returncode


def output_tail(output: str | bytes | None, limit: int = 4000) -> str:
    """The last ``limit`` characters of a program's output, as text (for failure messages)."""
    if output is None:
        return ""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    return output[-limit:]


@overload
def run_program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    text: Literal[True],
    check: bool = True,
    cwd: Path | None = None,
    context: str = "",
    error: type[Exception] = RuntimeError,
) -> subprocess.CompletedProcess[str]: ...


@overload
def run_program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    text: Literal[False] = False,
    check: bool = True,
    cwd: Path | None = None,
    context: str = "",
    error: type[Exception] = RuntimeError,
) -> subprocess.CompletedProcess[bytes]: ...


def run_program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    text: bool = False,
    check: bool = True,
    cwd: Path | None = None,
    context: str = "",
    error: type[Exception] = RuntimeError,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (stdin closed, output captured) for at most ``timeout`` seconds. A timeout, or
    (with ``check``) an exit status other than 0, raises ``error`` with the command, the tail of
    its output and ``context`` (a daemon's log tail, say)."""
    try:
        proc = subprocess.run(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=text,
            errors="replace" if text else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(
            f"timed out after {timeout} s: {' '.join(argv)}\nstdout: {output_tail(exc.stdout)}\n"
            f"stderr: {output_tail(exc.stderr)}\n{context}"
        ) from exc
    if check and proc.returncode != 0:
        raise error(
            f"exited with {proc.returncode}: {' '.join(argv)}\n"
            f"stdout: {output_tail(proc.stdout)}\nstderr: {output_tail(proc.stderr)}\n{context}"
        )
    return proc
