"""One way to run a server program under test: start it, wait until it serves, stop it by its pid.

The wrappers for distribution, the proxy, containerd, dockerd and moto differ in what they run
and how they tell that it serves; everything else is here once:

* ``start()`` writes what the program needs (``prepare``), starts it with stdin closed and its
  output appended to log files in the work dir (so a restart keeps the earlier lines), and waits,
  bounded, until ``readiness()`` says it serves. A program that exits meanwhile, or never gets
  ready, fails the start with the tail of its log, and is stopped.
* ``stop()`` sends SIGTERM and, after the grace period, SIGKILL; ``kill()`` sends SIGKILL at
  once (a crash). Both wait for the exit, record ``returncode`` and then run ``cleanup``.
* ``restart()``, use as a context manager, ``pid``, ``running``, ``send_signal``, ``log_tail``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Self

from support.binaries import free_port, stop_process


class ManagedProcess(ABC):
    #: What the program is called in messages.
    name = "process"
    #: Seconds ``start()`` waits for readiness; ``stop()`` waits after SIGTERM.
    start_timeout = 30.0
    stop_timeout = 10.0
    #: Seconds between readiness checks.
    ready_interval = 0.05
    #: Start the program in a session of its own (a terminal's Ctrl-C does not reach it).
    new_session = False

    def __init__(self, workdir: Path, stdout_path: Path, stderr_path: Path | None = None) -> None:
        """``stdout_path`` receives the program's output; its errors go there too, unless
        ``stderr_path`` names a file of their own."""
        self.workdir = workdir
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self.workdir.mkdir(parents=True, exist_ok=True)

    # --- what a subclass says ---------------------------------------------------------------------

    @abstractmethod
    def command(self) -> Sequence[str]:
        """The program and its arguments."""

    @abstractmethod
    def readiness(self) -> str | None:
        """None once the program serves; otherwise why not yet (shown if it never does)."""

    def environment(self) -> Mapping[str, str]:
        return os.environ

    def working_directory(self) -> Path:
        """Where the program runs: the work dir, unless a subclass says otherwise."""
        return self.workdir

    def prepare(self) -> None:
        """Write configuration files and check preconditions before each start."""

    def cleanup(self) -> None:
        """Remove what the program leaves behind, after each stop."""

    def failure(self, message: str) -> Exception:
        """The exception a failed start raises."""
        return RuntimeError(message)

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> None:
        if self.running:
            return
        self.prepare()
        argv, env = list(self.command()), dict(self.environment())
        self.returncode = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        stdout = self.stdout_path.open("ab")
        self._logs = [stdout]
        stderr: IO[bytes] | int = subprocess.STDOUT
        if self.stderr_path is not None:
            stderr = self.stderr_path.open("ab")
            self._logs.append(stderr)
        try:
            self._proc = subprocess.Popen(
                argv,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.working_directory(),
                start_new_session=self.new_session,
            )
            self._wait_ready(self.start_timeout if timeout is None else timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise self.failure(
                    f"{self.name} exited with {proc.returncode} while starting:\n" + self.log_tail()
                )
            reason = self.readiness()
            if reason is None:
                return
            if time.monotonic() >= deadline:
                raise self.failure(
                    f"{self.name} was not ready within {timeout} s ({reason}):\n" + self.log_tail()
                )
            time.sleep(self.ready_interval)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self._proc is not None:
            grace = self.stop_timeout if timeout is None else timeout
            self.returncode = stop_process(self._proc, grace)
            self._proc = None
        for log in self._logs:
            log.close()
        self._logs = []
        self.cleanup()
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, no grace (a crash); returns the exit code."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.kill()
            proc.wait(self.stop_timeout)
        return self.stop()

    def restart(self, timeout: float | None = None) -> None:
        """Stop gracefully and start again (same port, same state)."""
        self.stop()
        self.start(timeout)

    def send_signal(self, signum: signal.Signals) -> None:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        self._proc.send_signal(signum)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- logs -------------------------------------------------------------------------------------

    def log_text(self) -> str:
        """The program's output so far (stdout_path)."""
        if not self.stdout_path.exists():
            return ""
        return self.stdout_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stderr_path, self.stdout_path):
            if path is None:
                continue
            if not path.exists():
                parts.append(f"--- {path}: no log")
                continue
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts)


class LoopbackServer(ManagedProcess):
    """A program serving on a port of 127.0.0.1, the same port across restarts (a stopped server
    comes back at the same address)."""

    def __init__(
        self,
        workdir: Path,
        stdout_path: Path,
        stderr_path: Path | None = None,
        *,
        port: int | None = None,
    ) -> None:
        super().__init__(workdir, stdout_path, stderr_path)
        self.port = port if port is not None else free_port()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as used in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"
