"""The benchmark's own helper servers (the WAN relay, the bare aiohttp server) as subprocesses.

Each is a module of this package run as ``python -m bench.NAME --port PORT ...`` from the
``tests`` directory (where ``bench`` and ``support`` are top-level packages, as pytest sees
them).  A separate process keeps its CPU time out of the harness's own (which also runs the token
server) and gives it a pid whose memory can be read.  Starting, stopping and the logs are
:class:`support.managed_process.LoopbackServer`'s; ready means the port accepts connections.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from support.binaries import free_port
from support.managed_process import LoopbackServer

TESTS_DIR = Path(__file__).resolve().parents[1]


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ModuleServer(LoopbackServer):
    """``python -m MODULE --port PORT ARGS`` on 127.0.0.1, output in ``WORKDIR/NAME-PORT.log``."""

    ready_interval = 0.02

    def __init__(
        self, module: str, args: Sequence[str], workdir: Path, *, port: int | None = None
    ) -> None:
        self.module = module
        self.args = list(args)
        # The port is chosen first: the log file is named after it.
        port = port if port is not None else free_port()
        self.name = f"{module} on port {port}"
        log = workdir / f"{module.rsplit('.', 1)[-1]}-{port}.log"
        super().__init__(workdir, log, port=port)

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--port", str(self.port), *self.args]

    def working_directory(self) -> Path:
        return TESTS_DIR

    def readiness(self) -> str | None:
        return None if port_accepts(self.port) else "the port does not accept connections yet"
