"""Stand-ins for the programs a deployment guide calls that would reach AWS or the Internet;
``guide_shell.GuideShell`` puts them first on PATH as ``npx``, ``curl``, ``docker`` and ``pip``.

Run as ``python stand_ins.py PROGRAM ARGS...``, with ``GUIDE_STATE`` the directory where every
call is recorded (``calls.jsonl``, one JSON object a line) and ``GUIDE_REAL_NPX`` the real npx:

* ``npx aws-cdk@2 synth ...``: the real CDK CLI, as it is.
* ``npx aws-cdk@2 deploy ...``: the real CLI's ``synth --quiet`` with the same arguments (the
  first step of a deploy, with the same settings), then the cloud assembly is kept as
  ``deploys/N`` (the stack "deployed"; the aws stand-in answers ``describe-stacks`` from the
  last one), with the git state of the working tree at that moment.
* ``npx aws-cdk@2 bootstrap aws://ACCOUNT/REGION``: recorded; it must name its environment.
* ``curl ... --output FILE https://ip-ranges.amazonaws.com/ip-ranges.json``: the fixture
  ``fixtures/ip-ranges.json``; any other URL fails as a host that cannot be resolved.
* ``docker``: recorded (``login`` reads its password from stdin, as asked), nothing runs.
* ``pip``: refuses; the test's interpreter has the packages.

Only the standard library: this runs outside pytest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

IP_RANGES_URL = "https://ip-ranges.amazonaws.com/ip-ranges.json"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENVIRONMENT = re.compile(r"^aws://\d{12}/[a-z]{2}(-gov)?-[a-z]+-\d$")


def state() -> Path:
    return Path(os.environ["GUIDE_STATE"])


def record(program: str, argv: list[str], **details: object) -> None:
    entry = {"program": program, "argv": argv, "cwd": os.getcwd(), **details}
    with (state() / "calls.jsonl").open("a", encoding="utf-8") as calls:
        calls.write(json.dumps(entry) + "\n")


def refuse(program: str, message: str, status: int = 2) -> int:
    print(f"stand-in {program}: {message}", file=sys.stderr)
    return status


def npx(argv: list[str]) -> int:
    real = os.environ["GUIDE_REAL_NPX"]
    if argv[:1] != ["aws-cdk@2"] or len(argv) < 2:
        return refuse("npx", f"only the CDK CLI (npx aws-cdk@2 COMMAND) is expected, not {argv}")
    command, rest = argv[1], argv[2:]
    if command == "synth":
        return subprocess.run([real, *argv], check=False).returncode
    if command == "bootstrap":
        record("npx", argv)
        if len(rest) != 1 or not ENVIRONMENT.match(rest[0]):
            return refuse("npx", f"bootstrap names no environment aws://ACCOUNT/REGION: {rest}")
        print(f"stand-in: {rest[0]} bootstrapped (nothing done)")
        return 0
    if command != "deploy":
        return refuse("npx", f"aws-cdk@2 {command} is not expected")
    synth = subprocess.run([real, "aws-cdk@2", "synth", "--quiet", *rest], check=False)
    if synth.returncode != 0:
        record("npx", argv, deployed=None)
        return synth.returncode
    deploys = state() / "deploys"
    deploys.mkdir(exist_ok=True)
    kept = deploys / str(len(list(deploys.iterdir())) + 1)
    shutil.copytree(Path("cdk.out"), kept)
    # what the deploy took from the working tree that is not committed (None: no git clone)
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    uncommitted = status.stdout.splitlines() if status.returncode == 0 else None
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    commit = head.stdout.strip() if head.returncode == 0 else None
    record("npx", argv, deployed=str(kept), uncommitted=uncommitted, commit=commit)
    print(f"stand-in: deployed (synthesized into {kept})")
    return 0


def curl(argv: list[str]) -> int:
    urls = [argument for argument in argv if argument.startswith(("http://", "https://"))]
    output = None
    for flag in ("--output", "-o"):
        if flag in argv[:-1]:
            output = argv[argv.index(flag) + 1]
    record("curl", argv)
    if urls != [IP_RANGES_URL] or output is None:
        host = urls[0].split("/")[2] if urls else "?"
        return refuse("curl", f"curl: (6) Could not resolve host: {host}", 6)
    shutil.copyfile(FIXTURES / "ip-ranges.json", output)
    return 0


def docker(argv: list[str]) -> int:
    stdin = ""
    if "--password-stdin" in argv:
        stdin = sys.stdin.read()
        if not stdin.strip():
            return refuse("docker", "login --password-stdin read no password", 1)
    record("docker", argv, stdin=stdin)
    return 0


def main() -> int:
    program, argv = sys.argv[1], sys.argv[2:]
    if program == "npx":
        return npx(argv)
    if program == "curl":
        return curl(argv)
    if program == "docker":
        return docker(argv)
    record(program, argv)
    return refuse(program, "not run here: the test's interpreter has what the guide installs")


if __name__ == "__main__":
    sys.exit(main())
