"""Figures of the side-by-side run: one value per round and server, medians, ratios, tables.

A :class:`Row` is one figure (say "warm blob MB/s, filesystem") measured for some of the
servers: ``ours`` (registry-proxy), ``distribution`` (its proxy mode), ``bare`` (the bare aiohttp
server, the framework's limit) and ``direct`` (no cache: the pull straight from the upstream
through the WAN).  Each round adds one value per server; the summary gives the median, the range,
and ours divided by each of the others (the issue targets are written as such ratios).

Each value also carries the machine's state while it was measured (:mod:`.machine`): the load
average before and after, and the CPU other work took meanwhile. The summary gives, per figure
and server, the spread over the rounds and the rounds that other work disturbed; the tables mark
such a figure with ``!`` and list its rounds under "Load while measuring".

``python -m bench.results .bench/latest.json`` prints a run's Markdown table again.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import machine
from .text import table

# Several rows from one measurement (a rate, then its latencies) share its window.
SAME_MEASUREMENT = 0.5

CONTENDERS = ("ours", "distribution", "bare", "direct")
OTHERS = CONTENDERS[1:]


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str
    better: Literal["lower", "higher", ""]  # "" for counts that are not better either way
    chart: bool = False  # drawn in the PNG


@dataclass
class Results:
    rows: dict[str, Row] = field(default_factory=dict)
    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    windows: dict[str, dict[str, list[machine.Window]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    _since: machine.Snapshot = field(default_factory=machine.snapshot)
    _last_window: machine.Window | None = None

    def start_measuring(self) -> None:
        """The next value's window starts now (otherwise: at the previous value)."""
        self._since = machine.snapshot()

    def add(self, row: Row, contender: str, value: float) -> None:
        assert contender in CONTENDERS, contender
        now = machine.snapshot()
        if self._last_window is not None and now.at - self._since.at < SAME_MEASUREMENT:
            measured = self._last_window
        else:
            measured = self._last_window = machine.window(self._since, now)
            self._since = now
        self.rows.setdefault(row.key, row)
        self.values[row.key][contender].append(value)
        self.windows[row.key][contender].append(measured)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for key, row in self.rows.items():
            measured = {name: v for name in CONTENDERS if (v := self.values[key].get(name))}
            medians = {name: statistics.median(values) for name, values in measured.items()}
            figures = {
                name: {
                    "median": _round(medians[name]),
                    "min": _round(min(values)),
                    "max": _round(max(values)),
                    "values": [_round(v) for v in values],
                    **self._conditions(key, name, values, medians[name]),
                }
                for name, values in measured.items()
            }
            ratios = {
                f"ours/{other}": round(medians["ours"] / medians[other], 2)
                for other in OTHERS
                if "ours" in medians and medians.get(other)
            }
            # Round by round (the servers of a round ran one after the other): a target such as
            # "warm pull <= 1.0x distribution in every round" is read here.
            by_round = {
                f"ours/{other}": [
                    round(mine / theirs, 2) if theirs else None
                    for mine, theirs in zip(measured["ours"], measured[other], strict=False)
                ]
                for other in OTHERS
                if "ours" in measured and other in measured
            }
            out.append(
                {
                    "key": key,
                    "title": row.title,
                    "unit": row.unit,
                    "better": row.better,
                    "chart": row.chart,
                    "figures": figures,
                    "ratios": ratios,
                    "ratios_by_round": by_round,
                }
            )
        return out

    def _conditions(
        self, key: str, name: str, values: list[float], median: float
    ) -> dict[str, Any]:
        """The spread over the rounds and what the machine did while each was measured."""
        windows = self.windows[key][name]
        return {
            "spread": round((max(values) - min(values)) / median, 3) if median else None,
            "rounds": [w.as_json() for w in windows],
            "disturbed_rounds": [n + 1 for n, w in enumerate(windows) if w.disturbed],
        }


def _round(value: float) -> float:
    """Three significant digits are more than these figures can carry."""
    if value == 0:
        return 0.0
    magnitude = abs(value)
    digits = 3 if magnitude < 1 else 2 if magnitude < 10 else 1 if magnitude < 100 else 0
    return round(value, digits)


def _cell(figure: dict[str, Any] | None, *, ranges: bool) -> str:
    if figure is None:
        return ""
    median = f"{figure['median']:g}"
    flag = "!" if figure.get("disturbed_rounds") else ""
    if ranges and figure["min"] != figure["max"]:
        return f"{median} ({figure['min']:g}-{figure['max']:g}){flag}"
    return median + flag


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:g}x"


def _lines(summary: Sequence[dict[str, Any]], *, ranges: bool) -> list[list[str]]:
    header = ["figure", "unit", *CONTENDERS, *(f"ours/{o}" for o in OTHERS)]
    lines = [header]
    for row in summary:
        direction = {"lower": ", lower is better", "higher": ", higher is better"}.get(
            row["better"], ""
        )
        lines.append(
            [
                row["title"],
                row["unit"] + (direction if ranges else ""),
                *(_cell(row["figures"].get(c), ranges=ranges) for c in CONTENDERS),
                *(_ratio(row["ratios"].get(f"ours/{o}")) for o in OTHERS),
            ]
        )
    return lines


def text_table(summary: Sequence[dict[str, Any]]) -> str:
    """Medians, aligned for a terminal."""
    header, *lines = _lines(summary, ranges=False)
    return table(header, lines, left=2)


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """Medians with the range over the rounds in brackets, for docs/benchmarks.md; then, per
    figure and server, the spread and the load of every round."""
    lines = _lines(summary, ranges=True)
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    out += ["", "Load while measuring", "", *_markdown(load_lines(summary))]
    return "\n".join(out)


def load_lines(summary: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Per figure and server: the spread over the rounds, then each round's load average
    before and after and the cores other work used (``!``: disturbed)."""
    lines = [
        ["figure", "server", "spread", "rounds: load before-after, other cores", "ours/X by round"]
    ]
    for row in summary:
        if row["title"].endswith("latency"):
            continue  # measured with the rate above it: the same rounds
        for name, figure in row["figures"].items():
            rounds = figure.get("rounds") or []
            cells = [
                f"{w['load_before']:g}-{w['load_after']:g}, {w['other_cores']:g}"
                + ("!" if w["disturbed"] else "")
                for w in rounds
            ]
            spread = figure.get("spread")
            by_round = (row.get("ratios_by_round") or {}).get(f"ours/{name}")
            lines.append(
                [
                    row["title"],
                    name,
                    "" if spread is None else f"{spread * 100:.0f} %",
                    "; ".join(cells),
                    ", ".join(f"{r:g}x" for r in by_round if r is not None) if by_round else "",
                ]
            )
    return lines


def _markdown(lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    return out + ["| " + " | ".join(line) + " |" for line in lines[1:]]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.results", description=__doc__)
    parser.add_argument("results", type=Path, help="a run's JSON (.bench/latest.json)")
    args = parser.parse_args(argv)
    print(markdown_table(json.loads(args.results.read_text())["figures"]))


if __name__ == "__main__":
    main()
