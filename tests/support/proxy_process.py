"""The proxy under test, run as a real subprocess: ``registry-proxy serve``.

Configuration is by environment only (``PROXY_LISTEN``, ``PROXY_UPSTREAM_URL``,
``PROXY_UPSTREAM_USERNAME``, ``PROXY_UPSTREAM_PASSWORD``, ``PROXY_STORAGE``,
``PROXY_LOG_FORMAT=json`` and whatever ``extra_env`` adds); any ``PROXY_*`` variable inherited
from the test runner's environment is dropped first so it cannot leak in.  stdout and stderr go
to ``proxy.log`` in the work dir.  :meth:`ProxyProcess.start` returns once ``GET /healthz``
answers 200; stopping, killing and logs come from :class:`support.managed_process.ManagedProcess`.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from support.distribution import MANIFEST_ACCEPT
from support.managed_process import LoopbackServer


def proxy_executable() -> Path:
    """``registry-proxy`` next to the running Python (the project's virtualenv)."""
    return Path(sys.executable).parent / "registry-proxy"


class ProxyProcess(LoopbackServer):
    name = "registry-proxy"
    stop_timeout = 15.0

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
        super().__init__(workdir, workdir / "proxy.log", port=port)
        self.upstream_url = upstream_url
        self.username = username
        self.password = password
        self.storage = str(storage) if storage is not None else str(workdir / "cache")
        self.extra_env = dict(extra_env or {})
        self.executable = executable or proxy_executable()
        self.log_path = self.stdout_path
        if "://" not in self.storage:
            Path(self.storage).mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [str(self.executable), "serve"]

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

    def prepare(self) -> None:
        if not self.executable.exists():
            raise RuntimeError(
                f"{self.executable} not found: install the project into this virtualenv "
                "(pip install -e '.[test]')"
            )

    def readiness(self) -> str | None:
        status = self.healthz(timeout=2.0)
        if status == 200:
            return None
        return f"GET /healthz: HTTP {status}" if status else "GET /healthz: connection failed"

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

    def head(self, path: str, timeout: float = 30.0) -> tuple[int, dict[str, str]]:
        """Status and (lower-cased) headers of ``HEAD path``, accepting every manifest type."""
        request = urllib.request.Request(
            self.url + path, method="HEAD", headers={"Accept": MANIFEST_ACCEPT}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as error:
            with error:
                return int(error.code), {k.lower(): v for k, v in error.headers.items()}

    def log_tail(self, lines: int = 60) -> str:
        return super().log_tail(lines)

    def json_logs(self) -> list[dict[str, Any]]:
        """The log lines that parse as JSON objects (PROXY_LOG_FORMAT=json)."""
        records = []
        for line in self.log_text().splitlines():
            with suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    records.append(obj)
        return records
