"""registry-proxy benchmarks: side by side with distribution's proxy mode and aiohttp's limit.

Run from the ``tests`` directory (``make bench`` does)::

    cd tests && python -m bench.run [--quick] [--rounds 3] [--only SECTIONS] [--chart PATH] [--keep]

By default it runs the side-by-side sections (see :mod:`.sidebyside`: pulls, concurrent, docker,
manifests, blobs, s3, idle, ttl, eviction) for 3 rounds.  Three more sections run only when named
in ``--only``: ``memory`` (peak RSS while a 500 MB blob streams through the proxy, :mod:`.memory`),
``load`` (64 clients for 2 minutes, :mod:`.load`) and ``capacity`` (one task's limits: warm pulls
by 10, 25 and 50 clients, slow clients and a cold burst, :mod:`.capacity`, about 7 minutes).

``--quick`` (a smoke test, under two minutes): one round, a 24 MB image, 1 s per ab run, fewer
repetitions; ``memory`` and ``load`` shrink to a 100 MB blob and 15 s, ``capacity`` to a 24 MB
image and 8 s per step.

Results: the table on stdout; ``.bench/bench-<UTC time>.json`` (every value of every round,
medians, ratios, the machine) and ``.bench/latest.json``; the same table in Markdown with the
ranges in ``.bench/latest.md``; the chart in ``.bench/bench-<UTC time>.png`` and
``.bench/latest.png`` (or ``--chart PATH``).  Exit status 1 when a measurement failed (a pull
that did not verify, a client error) or a "must" of ``memory``/``load`` did not hold.

Programs: docker-registry, skopeo, curl, ab (apache2-utils); dockerd, containerd and root for
the Docker daemon rows; moto_server (the test extras) for S3; matplotlib (the bench extra) for
the chart.  A section whose programs are missing is reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from support.moto import CLEARED_VARIABLES

from . import capacity, capacity_report, chart, load, memory
from .results import Results, markdown_table, text_table
from .sidebyside import SECTIONS, Config, SideBySide

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / ".bench"
EXTRA_SECTIONS = ("memory", "load", "capacity")


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    memory_total = ""
    with contextlib.suppress(OSError):
        memory_total = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    versions = {}
    for program, flag in (
        ("docker-registry", "--version"),
        ("skopeo", "--version"),
        ("dockerd", "--version"),
        ("curl", "--version"),
        ("ab", "-V"),
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([program, flag], capture_output=True, timeout=10, check=False)
            versions[program] = out.stdout.decode().strip().splitlines()[0]
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": memory_total,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        **versions,
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    return platform.system()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `with`, which stops what it started


def _kill_leftover_children() -> None:
    """The last line of defence of a bounded run: a second Ctrl-C during the cleanup can cut a
    server's stop short, so whatever process this harness started and is still running now is
    killed, by its pid (our children only: their parent pid is ours)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == me and fields[0] != "Z":
            print(f"stopping a leftover process {entry.name}: {stat.split(')')[0]})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _raise_open_files_limit() -> None:
    """1 000 idle clients need 1 000 descriptors here and in each server (which inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="sections: " + ", ".join(SECTIONS + EXTRA_SECTIONS),
    )
    parser.add_argument("--quick", action="store_true", help="smoke test, under two minutes")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="sections, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--chart", type=Path, default=None, help="the PNG (a relative path: from the repository)"
    )
    parser.add_argument("--note", default="", help="added to the chart's title")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--blob-mb", type=int, default=None, help="memory: blob size (500)")
    parser.add_argument("--clients", type=int, default=64, help="load: clients (64)")
    parser.add_argument("--duration", type=float, default=None, help="load: seconds (120)")
    parser.add_argument("--max-images", type=int, default=3000, help="load: new images at most")
    args = parser.parse_args(argv)
    sections = frozenset(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sections - set(SECTIONS) - set(EXTRA_SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    rounds = args.rounds or (1 if args.quick else 3)
    if args.chart is not None and not args.chart.is_absolute():
        args.chart = REPO_ROOT / args.chart  # make runs this from tests/

    for name in CLEARED_VARIABLES:  # the proxies must see only moto's fake credentials
        os.environ.pop(name, None)
    _raise_open_files_limit()
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    # Ctrl-C stops the run cleanly even when started from a script that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-bench-"))
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "load_average_at_start": load_average(),
        "quick": args.quick,
        "rounds": rounds,
        "sections": sorted(sections),
    }
    results = Results()
    failed: list[str] = []
    try:
        side = sections & set(SECTIONS)
        if side:
            config = (Config.quick if args.quick else Config.full)(rounds, side)
            try:
                report["side_by_side"] = SideBySide(config, workdir, results).run()
            except Exception as exc:  # keep and write what was measured before
                traceback.print_exc()
                failed.append(f"side-by-side: {exc!r}"[:2000])
        if "memory" in sections:
            blob_mb = args.blob_mb or (100 if args.quick else 500)
            report["memory"] = asyncio.run(memory.memory_section(blob_mb, workdir))
        if "load" in sections:
            load_config = load.LoadConfig(
                clients=args.clients,
                duration=args.duration or (15.0 if args.quick else 120.0),
                sample_every=1.0 if args.quick else 2.0,
                max_images=args.max_images,
            )
            print(f"load: {load_config.clients} clients for {load_config.duration} s", flush=True)
            report["load"] = asyncio.run(load.load_section(load_config, workdir))
        if "capacity" in sections:
            capacity_config = (
                capacity.CapacityConfig.quick if args.quick else capacity.CapacityConfig.full
            )()
            report["capacity"] = capacity.capacity_section(capacity_config, workdir)
    finally:
        _kill_leftover_children()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = results.summary()
    report.update(
        {
            "seconds": round(time.monotonic() - started, 1),
            "load_average_at_end": load_average(),
            "figures": summary,
            "notes": results.notes,
            "skipped": results.skipped,
        }
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    for name in (f"bench-{stamp}.json", "latest.json"):
        (RESULTS_DIR / name).write_text(text)
    if summary:
        print("\nSide by side (medians of the rounds; ours/X: our median over theirs)")
        print(text_table(summary))
        (RESULTS_DIR / "latest.md").write_text(markdown_table(summary) + "\n")
        _draw(summary, report, args.chart or RESULTS_DIR / f"bench-{stamp}.png", args.note)
    for row in summary:
        if row["title"].endswith("latency"):
            continue  # measured with the rate above it: the same rounds
        disturbed = {
            name: figure["disturbed_rounds"]
            for name, figure in row["figures"].items()
            if figure["disturbed_rounds"]
        }
        if disturbed:
            print(f"disturbed (other work on the machine): {row['title']}: {disturbed}")
    for note in results.notes:
        print(f"note: {note}")
    for section, reason in results.skipped.items():
        print(f"skipped: {section}: {reason}")
    if "memory" in report:
        failed += memory.report(report["memory"])
    if "load" in report:
        failed += load.report(report["load"])
    if "capacity" in report:
        failed += capacity_report.report(report["capacity"], RESULTS_DIR)
    print(f"\nresults: {RESULTS_DIR / f'bench-{stamp}.json'} ({report['seconds']} s)")
    for failure in failed:
        print(f"FAILED: {failure}")
    return 1 if failed else 0


def _draw(summary: list[dict[str, Any]], report: dict[str, Any], path: Path, note: str) -> None:
    problem = chart.draw(summary, path, title=chart.title(report, note))
    if problem is not None:
        print(f"chart: not drawn: {problem}")
        return
    if path.parent == RESULTS_DIR:
        shutil.copyfile(path, RESULTS_DIR / "latest.png")
    print(f"chart: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
