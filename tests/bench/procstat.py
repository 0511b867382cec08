"""What the kernel says about a server process: resident memory, its peak, open files.

Peak RSS is the kernel's ``VmHWM`` (high-water mark of the resident set).  Between two
measurements on one long-lived server the harness resets it (``echo 5 > /proc/PID/clear_refs``,
Linux 4.0+) so that each figure is the peak of its own scenario, not of everything before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000
MiB = 1024 * 1024


def proc_status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of /proc/PID/status, in bytes (VmRSS, VmHWM = peak RSS, ...)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") and rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def rss_mb(pid: int) -> float:
    return round(proc_status(pid)["VmRSS"] / MB, 1)


def peak_rss_mb(pid: int) -> float:
    return round(proc_status(pid)["VmHWM"] / MB, 1)


def reset_peak_rss(pid: int) -> bool:
    """Start a new high-water mark at the current RSS; False where the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    at: float
    rss: int
    fds: int
    # What the process says its bounded in-memory caches hold, read just after the RSS (0: not
    # asked): the part of RSS that grows with use by design, until each cache is at its bound.
    held: int = 0

    @property
    def beyond_held(self) -> int:
        return self.rss - self.held


HeldBytes = Callable[[], Awaitable[int]]


class Sampler:
    """Samples a process's RSS and open file count every ``interval`` seconds, and with
    ``held``, what its bounded caches hold."""

    def __init__(self, pid: int, interval: float, held: HeldBytes | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[Sample] = []
        self._held = held
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    async def sample(self) -> None:
        at = time.monotonic() - self._started
        rss, fds = proc_status(self.pid)["VmRSS"], open_files(self.pid)
        held = await self._held() if self._held is not None else 0
        self.samples.append(Sample(at, rss, fds, held))

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sample()
