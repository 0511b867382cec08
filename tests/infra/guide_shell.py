"""A shell in which a deployment guide's commands run verbatim, as their reader runs them, and
nothing reaches AWS: shared by the tests of infra/README.md (test_deploy_docs) and of
docs/codebuild.md (test_codebuild_guide).

What runs for real: bash, ``jq``, ``git``, ``registry-proxy`` and ``python3`` (the test's own
interpreter, which has the packages the guides install), the CDK CLI (``npx aws-cdk@2``, on the
test extras' Node) and the AWS CLI (Debian's ``awscli``). What stands in (stand_ins.py,
aws_stand_in.py, first on PATH): ``deploy`` becomes ``synth`` (its first step, with the same
settings) and keeps each cloud assembly as "deployed"; AWS's answers are made up behind the real
AWS CLI; ``curl`` serves AWS's ip-ranges.json from a fixture; ``docker`` records what it was
asked; ``pip`` refuses. There are no AWS credentials (their files point at nothing, instance
metadata is off), CDK telemetry is off, and npm uses the cache the ``npx`` fixture filled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLI_TIMEOUT = 600
# what identifies commits made by the guide's `git commit`s
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Guide Reader",
    "GIT_AUTHOR_EMAIL": "reader@example.com",
    "GIT_COMMITTER_NAME": "Guide Reader",
    "GIT_COMMITTER_EMAIL": "reader@example.com",
}


def awscli_python() -> str | None:
    """The interpreter of an installed AWS CLI (its ``aws`` script's), if it can import it."""
    candidates = ["/usr/bin/aws"]
    found = shutil.which("aws")
    if found is not None:
        candidates.append(str(Path(found).resolve()))
    for candidate in candidates:
        try:
            first = Path(candidate).read_text(encoding="utf-8", errors="replace").splitlines()[0]
        except (OSError, IndexError):
            continue
        if not first.startswith("#!") or "python" not in first:
            continue
        interpreter = first[2:].strip().split()[0]
        probe = subprocess.run(
            [interpreter, "-c", "import awscli.clidriver"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return interpreter
    return None


def npm_cache() -> str:
    """npm's cache of this process (npm reads its settings in either case)."""
    for name in ("npm_config_cache", "NPM_CONFIG_CACHE"):
        if name in os.environ:
            return os.environ[name]
    return str(Path.home() / ".npm")


@dataclass(frozen=True)
class Deploy:
    """One ``npx aws-cdk@2 deploy``: where it ran, its cloud assembly, what was uncommitted
    and the commit checked out (None for both outside a git clone)."""

    cwd: Path
    assembly: Path
    uncommitted: list[str] | None
    commit: str | None

    def template(self, stack_name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(
            (self.assembly / f"{stack_name}.template.json").read_text()
        )
        return document

    def staged_file(self, stack_name: str, object_key: str) -> Path:
        """The file this deploy would have uploaded as the asset ``object_key``."""
        return staged_file(self.assembly, stack_name, object_key)


def staged_file(assembly: Path, stack_name: str, object_key: str) -> Path:
    """The file of cloud assembly ``assembly`` that a deploy uploads as ``object_key``."""
    assets = json.loads((assembly / f"{stack_name}.assets.json").read_text())
    for asset in assets["files"].values():
        keys = {destination["objectKey"] for destination in asset["destinations"].values()}
        if object_key in keys:
            return assembly / str(asset["source"]["path"])
    raise AssertionError(f"no file asset uploaded as {object_key}")


class GuideShell:
    """Stand-ins, state and environment under ``root``; ``run`` runs a script of a guide."""

    def __init__(self, root: Path, *, npx: str, aws_python: str | None) -> None:
        self.root = root
        self.bin = root / "bin"
        self.state = root / "state"
        self.home = root / "home"
        for directory in (self.bin, self.state, self.home):
            directory.mkdir(parents=True, exist_ok=True)
        self.npx = npx
        programs = {
            name: f'exec "{sys.executable}" "{HERE / "stand_ins.py"}" {name} "$@"'
            for name in ("npx", "curl", "docker", "pip", "pip3")
        }
        programs["aws"] = (
            f'exec "{aws_python}" "{HERE / "aws_stand_in.py"}" "$@"'
            if aws_python is not None
            else 'echo "stand-in aws: no AWS CLI to run (Debian package awscli)" >&2; exit 127'
        )
        for name, command in programs.items():
            wrapper = self.bin / name
            wrapper.write_text(f"#!/bin/sh\n{command}\n")
            wrapper.chmod(0o755)

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        path = [str(self.bin), str(Path(sys.executable).parent), env.get("PATH", "")]
        env |= {
            "PATH": os.pathsep.join(path),
            "HOME": str(self.home),
            "GUIDE_STATE": str(self.state),
            "GUIDE_REAL_NPX": self.npx,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
            "CDK_DISABLE_CLI_TELEMETRY": "true",
            # the CLI is in npm's cache already (the npx fixture), whatever HOME is here
            "npm_config_cache": npm_cache(),
            # the jsii runtime's unpacked CDK libraries, likewise (unpacking takes seconds)
            "JSII_RUNTIME_PACKAGE_CACHE_ROOT": os.environ.get(
                "JSII_RUNTIME_PACKAGE_CACHE_ROOT",
                str(Path.home() / ".cache" / "aws" / "jsii" / "package-cache"),
            ),
            "npm_config_prefer_offline": "true",
            # what answering npx's "Ok to proceed?" does at a terminal
            "npm_config_yes": "true",
            "GIT_CONFIG_NOSYSTEM": "1",
            **GIT_IDENTITY,
        }
        env.pop("VIRTUAL_ENV", None)
        return env | dict(extra or {})

    def run(
        self, script: str, cwd: Path, *, stdin: str = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``script`` in a new bash session in ``cwd`` (stopping at the first failure, as
        ``set -euo pipefail`` does); fails the test unless it succeeds, when ``check``."""
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=cwd,
            env=self.environment(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if check:
            assert result.returncode == 0, (
                f"exit {result.returncode}:\n{script}\n--- stdout\n{result.stdout[-4000:]}"
                f"\n--- stderr\n{result.stderr[-6000:]}"
            )
        return result

    def calls(self, program: str | None = None) -> list[dict[str, Any]]:
        """Every stand-in call so far (of ``program``, if given), in order."""
        path = self.state / "calls.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        entries = [json.loads(line) for line in lines]
        return [e for e in entries if program is None or e["program"] == program]

    def aws_calls(self, operation: str) -> list[dict[str, Any]]:
        return [e for e in self.calls("aws") if e["operation"] == operation]

    def deploys(self) -> list[Deploy]:
        return [
            Deploy(Path(e["cwd"]), Path(e["deployed"]), e["uncommitted"], e["commit"])
            for e in self.calls("npx")
            if e["argv"][1] == "deploy" and e.get("deployed")
        ]

    def aws_state(self) -> dict[str, Any]:
        path = self.state / "aws.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return data
