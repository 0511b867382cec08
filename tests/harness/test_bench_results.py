"""The benchmark's report (tests/bench/results.py, machine.py): every figure says how busy the
machine was while it was measured, and a round that other work disturbed is flagged."""

from __future__ import annotations

from bench import machine
from bench.results import Results, Row, load_lines, markdown_table

ROW = Row("warm_pull", "warm pull, skopeo", "s", "lower")


def test_other_load_is_the_machine_less_this_harness() -> None:
    start = machine.Snapshot(at=10.0, load_average=0.5, busy_ticks=1000, own_ticks=400)
    end = machine.Snapshot(
        at=12.0,
        load_average=1.5,
        busy_ticks=1000 + 3 * machine.TICKS,
        own_ticks=400 + 2 * machine.TICKS,
    )
    window = machine.window(start, end)
    assert window.other_cores == 0.5  # 3 s of CPU in 2 s, 2 of them ours
    assert window.disturbed
    assert (window.load_before, window.load_after) == (0.5, 1.5)
    quiet = machine.window(start, machine.Snapshot(12.0, 0.4, 1000 + machine.TICKS // 10, 400))
    assert not quiet.disturbed


def test_a_snapshot_counts_this_process_tree() -> None:
    before = machine.snapshot()
    sum(range(3_000_000))  # some CPU of our own
    after = machine.snapshot()
    assert after.own_ticks >= before.own_ticks
    assert after.busy_ticks >= before.busy_ticks
    assert after.load_average >= 0


def test_disturbed_rounds_are_reported_with_the_spread() -> None:
    results = Results()
    quiet = machine.Window(2.0, 0.3, 0.4, 0.05)
    busy = machine.Window(2.0, 3.0, 4.0, 1.2)
    for value, window in ((1.0, quiet), (1.2, busy), (1.1, quiet)):
        results.add(ROW, "ours", value)
        results.windows[ROW.key]["ours"][-1] = window
    [row] = results.summary()
    ours = row["figures"]["ours"]
    assert ours["disturbed_rounds"] == [2]
    assert ours["spread"] == round(0.2 / 1.1, 3)
    assert [r["other_cores"] for r in ours["rounds"]] == [0.05, 1.2, 0.05]
    assert "1.1 (1-1.2)!" in markdown_table([row])
    [_, line] = load_lines([row])
    assert line[:3] == ["warm pull, skopeo", "ours", "18 %"]
    assert line[4] == ""  # no other server measured
    assert "3-4, 1.2!" in line[3]
