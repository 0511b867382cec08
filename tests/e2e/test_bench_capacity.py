"""The capacity section's quick form as a smoke test: it runs to its end and finds no error.

``--quick --only capacity`` (about a minute and a half): the proxy with the stack's task
environment on S3 (moto), warm pulls by 10, 25 and 50 skopeo clients, 80 slow clients, a cold
burst. Every pull is checked by skopeo against its digests, every 5xx in the proxy's log counts
as an error, and the cold burst must cost the upstream the images once; the run exits 1
otherwise. Nothing here looks at a speed: that is the benchmark's business.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from support.binaries import require_binaries, run_program
from support.moto import moto_server_path

pytestmark = pytest.mark.e2e

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent


def test_the_quick_capacity_section_runs_without_errors() -> None:
    require_binaries("docker-registry", "skopeo", "ab", "curl")
    moto_server_path()  # skips (or fails in CI) without it
    # Raises with the tail of the run's output unless it exits 0.
    run_program(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "capacity"],
        env=os.environ,
        cwd=TESTS_DIR,
        text=True,
        timeout=600,
    )
    capacity = json.loads((REPO_ROOT / ".bench" / "latest.json").read_text())["capacity"]
    assert "skipped" not in capacity, capacity
    rows = [*capacity["steps"], capacity["slow_clients"], capacity["cold_burst"]]
    assert [s["clients"] for s in capacity["steps"]] == [10, 25, 50]
    for row in rows:
        assert row["failed_pulls"] == 0 and row["server_errors"] == [], row
    assert capacity["cold_burst"]["upstream_bytes_per_image_set"] <= 1.05
    assert capacity["model"]["cpu_s_per_gb_from_s3"] > 0
