"""What the kernel says about CPU time and TCP connections, for the capacity section.

* :func:`process_cpu_seconds`: user plus system time of a process, all its threads
  (``/proc/PID/stat`` fields 14 and 15).
* :func:`run_queue_seconds`: how long a process's main thread (the proxy's event loop) was
  ready to run but waited for a CPU (``/proc/PID/schedstat``, second field): the time other
  processes on its core cost it.
* :func:`core_times`: busy and total time of each CPU core since boot (``/proc/stat``), so that
  a step can say how busy each core was, whoever used it.
* :func:`connections`: the established TCP connections of one process, counted by what they
  connect (clients on the port it listens on, S3 on moto's port, the upstream), from the
  socket inodes in ``/proc/PID/fd`` matched against ``/proc/net/tcp`` and ``tcp6``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
ESTABLISHED = "01"


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system, every thread) the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_queue_seconds(pid: int) -> float:
    """Seconds the main thread of ``pid`` has waited on a run queue so far."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


@dataclass(frozen=True)
class CoreTime:
    busy: float  # seconds not idle (user, nice, system, irq, softirq, steal)
    total: float


def core_times() -> dict[int, CoreTime]:
    """Per core: busy and total seconds since boot."""
    cores: dict[int, CoreTime] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        idle = ticks[3] + ticks[4]
        total = sum(ticks)
        cores[int(name[3:])] = CoreTime((total - idle) / TICKS, total / TICKS)
    return cores


def busy_percent(before: Mapping[int, CoreTime], after: Mapping[int, CoreTime]) -> dict[int, float]:
    """How busy each core was between two readings, in percent."""
    out = {}
    for core, end in after.items():
        start = before.get(core)
        if start is None or end.total <= start.total:
            continue
        out[core] = round(100 * (end.busy - start.busy) / (end.total - start.total), 1)
    return out


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / entry)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _port(address: str) -> int:
    return int(address.rpartition(":")[2], 16)


def connections(pid: int, listening_port: int, remote_ports: Mapping[str, int]) -> dict[str, int]:
    """Established TCP connections of ``pid``: ``clients`` (accepted on ``listening_port``) and,
    for each name of ``remote_ports``, those it opened to that port."""
    inodes = _socket_inodes(pid)
    counts = {"clients": 0, **dict.fromkeys(remote_ports, 0)}
    by_port = {port: name for name, port in remote_ports.items()}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != ESTABLISHED or fields[9] not in inodes:
                continue
            if _port(fields[1]) == listening_port:
                counts["clients"] += 1
            elif (name := by_port.get(_port(fields[2]))) is not None:
                counts[name] += 1
    return counts
