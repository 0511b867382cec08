"""The benchmark's own helper servers (the WAN relay, the bare aiohttp server) as subprocesses.

Each is a module of this package run as ``python -m tests.bench.NAME --port PORT ...`` from the
repository root.  A separate process keeps its CPU time out of the harness's own (which also
runs the token server) and gives it a pid whose memory can be read.  :meth:`start` returns once
the port accepts connections; :meth:`stop` ends the process by its pid, SIGTERM then SIGKILL.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from support.binaries import free_port, stop_process, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ModuleServer:
    """``python -m MODULE --port PORT ARGS`` on 127.0.0.1, output in ``WORKDIR/NAME.log``."""

    def __init__(
        self, module: str, args: Sequence[str], workdir: Path, *, port: int | None = None
    ) -> None:
        self.module = module
        self.args = list(args)
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.log_path = workdir / f"{module.rsplit('.', 1)[-1]}-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(self.port), *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
        try:
            wait_for(self._ready, timeout, what=f"{self.module} on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            log = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.module} exited with {proc.returncode}:\n{log}")
        return port_accepts(self.port)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self._proc, timeout)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ModuleServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
