"""Fixtures for the infra tests: the CDK app is synthesized once per session per scenario.

The first synthesis in a process pays for starting the jsii runtime (a few seconds); later ones
take about a second each.  The CDK libraries run on Node.js: without ``node`` on PATH these
tests are skipped with a note at the end of the run, unless ``PROXY_TEST_REQUIRE_BINARIES=1``
(as in CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"
if str(INFRA_DIR) not in sys.path:
    sys.path.insert(0, str(INFRA_DIR))

NODE_MISSING = shutil.which("node") is None
BINARIES_REQUIRED = os.environ.get("PROXY_TEST_REQUIRE_BINARIES", "").strip().lower() in (
    "1",
    "true",
    "yes",
)

if NODE_MISSING and not BINARIES_REQUIRED:
    collect_ignore_glob = ["test_*.py"]

    def pytest_terminal_summary(terminalreporter: Any) -> None:
        terminalreporter.write_sep(
            "-",
            "tests/infra SKIPPED: node is not on PATH (Debian package: nodejs); "
            "the AWS CDK libraries run on it",
        )

else:
    from .scenarios import CUSTOM_CONTEXT, DEFAULT_CONTEXT, Synthesized, synthesize

    @pytest.fixture(scope="session")
    def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
        return synthesize("default", DEFAULT_CONTEXT, tmp_path_factory.mktemp("cdk-default"))

    @pytest.fixture(scope="session")
    def custom_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
        return synthesize("custom", CUSTOM_CONTEXT, tmp_path_factory.mktemp("cdk-custom"))

    @pytest.fixture(scope="session", params=["default", "custom"])
    def any_synth(
        request: pytest.FixtureRequest, default_synth: Synthesized, custom_synth: Synthesized
    ) -> Synthesized:
        """Both scenarios, for properties that must hold whatever the settings."""
        return default_synth if request.param == "default" else custom_synth
