"""How busy the machine was while a figure was measured, and with whose work.

A figure read off a machine that something else kept busy says little (several people share
these machines). For every measurement window the harness records:

* the load average (1 minute) before and after, as ``uptime`` shows it;
* the CPU the rest of the machine used meanwhile, in cores: all busy CPU time (``/proc/stat``)
  less that of this harness's own process tree (itself, the servers, the clients it started,
  and the children they already reaped). That is the other load, and unlike the load average it
  does not count the benchmark's own work and does not lag.

A window where the others used more than ``DISTURBED_CORES`` is flagged as disturbed: the
figure is kept, and the report says which rounds to distrust.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# Other work using a quarter of one core while a figure is measured already moves it on a
# 2-core machine (the server and its client each need one).
DISTURBED_CORES = 0.25


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic seconds
    load_average: float  # 1 minute
    busy_ticks: int  # the whole machine's
    own_ticks: int  # this process tree's


def snapshot() -> Snapshot:
    return Snapshot(time.monotonic(), os.getloadavg()[0], _busy_ticks(), _tree_ticks(os.getpid()))


@dataclass(frozen=True)
class Window:
    """What the machine did between two snapshots."""

    seconds: float
    load_before: float
    load_after: float
    other_cores: float  # CPU used by everything but this harness, in cores

    @property
    def disturbed(self) -> bool:
        return self.other_cores > DISTURBED_CORES

    def as_json(self) -> dict[str, float | bool]:
        return {
            "seconds": round(self.seconds, 1),
            "load_before": round(self.load_before, 2),
            "load_after": round(self.load_after, 2),
            "other_cores": round(self.other_cores, 2),
            "disturbed": self.disturbed,
        }


def window(start: Snapshot, end: Snapshot) -> Window:
    seconds = max(end.at - start.at, 1e-6)
    other = (end.busy_ticks - start.busy_ticks) - (end.own_ticks - start.own_ticks)
    return Window(seconds, start.load_average, end.load_average, max(0.0, other / TICKS / seconds))


def _busy_ticks() -> int:
    """Busy CPU ticks of the whole machine: /proc/stat's first line without idle and iowait."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq + steal


def _tree_ticks(root: int) -> int:
    """CPU ticks of ``root`` and every live descendant, each with its reaped children's."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rpartition(")")[2].split()
        # after the command: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(v) for v in fields[11:15])
    total = 0
    for pid, ticks in times.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root:
            total += ticks
    return total
