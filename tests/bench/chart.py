"""One PNG of the side-by-side figures (matplotlib: ``pip install -e '.[bench]'``).

One small horizontal bar chart per figure marked ``chart`` in :mod:`.results`: a bar per server
at its median over the rounds, a line across the range, the median written beside it.  The run
writes it; to draw it again from a run's JSON (say, with another title note)::

    python -m bench.chart .bench/latest.json docs/benchmarks.png [--note "preliminary"]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .results import CONTENDERS

COLOURS = {
    "ours": "#1f77b4",
    "distribution": "#ff7f0e",
    "bare": "#7f7f7f",
    "direct": "#2ca02c",
}
COLUMNS = 4


def title(report: Mapping[str, Any], note: str = "") -> str:
    """What the chart shows and where it was measured, from a run's JSON."""
    host = report["machine"]
    start, end = report["load_average_at_start"][0], report["load_average_at_end"][0]
    parts = [
        f"registry-proxy side by side, {report['date'][:10]}",
        f"{host['cpus']} x {host['cpu']}, load average {start} at start, {end} at end",
        f"median of {report['rounds']} round(s){' (--quick)' if report['quick'] else ''}",
    ]
    return ", ".join(parts) + (f"; {note}" if note else "")


def draw(summary: Sequence[dict[str, Any]], path: Path, *, title: str) -> str | None:
    """Write the chart to ``path``; returns why not, or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: pip install -e '.[bench]'"
    rows = [row for row in summary if row["chart"] and row["figures"]]
    if not rows:
        return "no figures to draw"
    lines = math.ceil(len(rows) / COLUMNS)
    fig, axes = plt.subplots(lines, COLUMNS, figsize=(4.2 * COLUMNS, 2.3 * lines), squeeze=False)
    cells = list(axes.flat)
    for ax, row in zip(cells, rows, strict=False):
        names = [name for name in CONTENDERS if name in row["figures"]]
        figures = [row["figures"][name] for name in names]
        medians = [f["median"] for f in figures]
        spread = [
            [f["median"] - f["min"] for f in figures],
            [f["max"] - f["median"] for f in figures],
        ]
        positions = list(range(len(names)))
        ax.barh(positions, medians, xerr=spread, color=[COLOURS[n] for n in names], capsize=2)
        ax.set_yticks(positions, labels=names, fontsize=8)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlim(0, max(medians + [f["max"] for f in figures]) * 1.3 or 1)
        for position, figure in zip(positions, figures, strict=True):  # right of the range
            ax.text(figure["max"], position, f"  {figure['median']:g}", va="center", fontsize=7)
        better = f", {row['better']} is better" if row["better"] else ""
        ax.set_title(f"{row['title']}\n{row['unit']}{better}", fontsize=8)
    for ax in cells[len(rows) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chart", description=__doc__)
    parser.add_argument("results", type=Path, help="a run's JSON (.bench/latest.json)")
    parser.add_argument("png", type=Path)
    parser.add_argument("--note", default="", help="added to the title")
    args = parser.parse_args(argv)
    report = json.loads(args.results.read_text())
    problem = draw(report["figures"], args.png, title=title(report, args.note))
    if problem is not None:
        raise SystemExit(problem)


if __name__ == "__main__":
    main()
