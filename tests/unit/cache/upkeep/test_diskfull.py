"""proxy/cache/upkeep/diskfull.py: a full disk is counted every time, logged once per interval
with the count since the last line, and wakes the evictor. On a real tmpfs, through the app:
tests/http/test_disk_full.py."""

from __future__ import annotations

import structlog
from support.clock import Clock

from proxy.cache.upkeep.diskfull import LOG_INTERVAL, DiskFullAlarm


def test_each_report_counts_and_wakes_the_evictor_but_the_log_says_it_once_per_interval() -> None:
    clock = Clock()
    where: list[str] = []
    woken: list[None] = []
    alarm = DiskFullAlarm(on_event=where.append, clock=clock)
    alarm.report("spool", "before the evictor runs")
    alarm.make_room = lambda: woken.append(None)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            alarm.report("storage", "ENOSPC")
        clock.advance(LOG_INTERVAL)
        alarm.report("spool", "ENOSPC")
    assert alarm.events == 5
    assert where == ["spool", "storage", "storage", "storage", "spool"]
    assert len(woken) == 4
    lines = [line for line in logs if line["event"] == "disk.full"]
    # the three storage reports were not logged on their own: the next line counts them too
    assert [(line["where"], line["events"]) for line in lines] == [("spool", 4)]
