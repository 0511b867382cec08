"""Where things are in the repository, wherever the test that asks lives."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / "proxy"
TESTS = REPO / "tests"
DOCS = REPO / "docs"
