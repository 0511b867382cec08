"""The proxy under test, run as a real subprocess: ``registry-proxy serve``.

Configuration is by environment only (``PROXY_LISTEN``, ``PROXY_UPSTREAM_URL``,
``PROXY_UPSTREAM_USERNAME``, ``PROXY_UPSTREAM_PASSWORD``, ``PROXY_STORAGE``,
``PROXY_LOG_FORMAT=json`` and whatever ``extra_env`` adds); any ``PROXY_*`` variable inherited
from the test runner's environment is dropped first so it cannot leak in.  stdout and stderr go
to ``proxy.log`` in the work dir.  :meth:`ProxyProcess.start` returns once ``GET /healthz``
answers 200.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from support.binaries import free_port, stop_process


def proxy_executable() -> Path:
    """``registry-proxy`` next to the running Python (the project's virtualenv)."""
    return Path(sys.executable).parent / "registry-proxy"


class ProxyProcess:
    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        storage: str | Path | None = None,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        executable: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.upstream_url = upstream_url
        self.username = username
        self.password = password
        self.storage = str(storage) if storage is not None else str(workdir / "cache")
        self.port = port if port is not None else free_port()
        self.extra_env = dict(extra_env or {})
        self.executable = executable or proxy_executable()
        self.log_path = workdir / "proxy.log"
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        if "://" not in self.storage:
            Path(self.storage).mkdir(parents=True, exist_ok=True)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as used in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        env.update(
            {
                "PROXY_LISTEN": self.host,
                "PROXY_UPSTREAM_URL": self.upstream_url,
                "PROXY_STORAGE": self.storage,
                "PROXY_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.username is not None:
            env["PROXY_UPSTREAM_USERNAME"] = self.username
        if self.password is not None:
            env["PROXY_UPSTREAM_PASSWORD"] = self.password
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        if not self.executable.exists():
            raise RuntimeError(
                f"{self.executable} not found: install the project into this virtualenv "
                "(pip install -e '.[test]')"
            )
        self.returncode = None
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(self.executable), "serve"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
            cwd=self.workdir,
        )
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                raise RuntimeError(
                    f"registry-proxy exited with {proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            status = self.healthz(timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}" if status else "connection failed"
            time.sleep(0.05)
        raise RuntimeError(
            f"registry-proxy did not answer GET /healthz with 200 on {self.url} within "
            f"{timeout} s ({last}):\n{self.log_tail()}"
        )

    def healthz(self, timeout: float = 5.0) -> int | None:
        """Status of ``GET /healthz``; None when the connection fails."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=timeout) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as err:
            err.close()
            return err.code
        except OSError:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self._proc is not None:
            self.returncode = stop_process(self._proc, timeout)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL at once (a crash); returns the exit code."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.kill()
            proc.wait(15)
        return self.stop()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop gracefully and start again on the same port with the same storage."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> ProxyProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- {self.log_path} (last {len(text)} lines)\n" + "\n".join(text)

    def json_logs(self) -> list[dict[str, Any]]:
        """The log lines that parse as JSON objects (PROXY_LOG_FORMAT=json)."""
        records = []
        for line in self.log_text().splitlines():
            with suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    records.append(obj)
        return records
