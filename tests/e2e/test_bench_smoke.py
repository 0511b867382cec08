"""`make bench-quick` as a smoke test: the side-by-side harness runs to its end.

Every pull it makes is verified against the upstream's digests and every blob GET checked for
size, so a run that exits 0 says the proxy, distribution's proxy mode, the bare server, the WAN
relay, the Docker daemon mirror and S3 on moto all worked as the benchmark drives them. Nothing
here looks at a figure: speed is the benchmark's business, never a test's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from support.binaries import binaries_required, require_binaries, run_program

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_benchmark_runs_to_its_end(tmp_path: Path) -> None:
    require_binaries("docker-registry", "skopeo", "ab", "curl", "dockerd", "containerd")
    # Raises with the tail of the run's output unless it exits 0.
    result = run_program(
        [sys.executable, "-m", "bench.run", "--quick", "--chart", str(tmp_path / "c.png")],
        env=os.environ,
        cwd=REPO_ROOT / "tests",
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    report = json.loads((REPO_ROOT / ".bench" / "latest.json").read_text())
    assert report["figures"], output[-6000:]
    if binaries_required():  # in CI nothing may be skipped for a missing program
        assert report["skipped"] == {}, report["skipped"]
