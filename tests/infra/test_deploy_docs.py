"""The deploy as infra/README.md documents it: the settings in cdk.json, one command for the first
deploy and every redeploy, run with the real CDK CLI (``npx aws-cdk@2``).

The commands are taken from the README as written and run in a shell (guide_shell.GuideShell)
where ``deploy`` is the real CLI's ``synth`` (a deploy needs an AWS account; its first step is
this synthesis, with the same settings).  The CLI runs in a project directory of the test's own:
the repository's cdk.json with the README's settings added to its context, and app.py.  It needs
no AWS credentials and reaches no AWS endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry_proxy_infra.application import INFRA_DIR, cdk_json_context
from support import markdown

from .guide_shell import GuideShell

README = INFRA_DIR / "README.md"
STACK = "RegistryProxy"


def section(title: str) -> str:
    return markdown.section(README.read_text(), title)


def documented_settings() -> dict[str, Any]:
    (block,) = markdown.code_blocks(section("4. The settings"), "json")
    settings: dict[str, Any] = json.loads(block)["context"]
    return settings


def test_every_documented_deploy_is_the_same_command() -> None:
    every = markdown.shell_commands(README.read_text(), "aws-cdk@2 deploy")
    assert len(every) >= 2, every
    assert set(every) == {"npx aws-cdk@2 deploy"}, every
    assert not any(" -c " in command or "--context" in command for command in every)


def test_documented_settings_are_what_a_deployment_must_state() -> None:
    settings = documented_settings()
    known = {row_key for row_key in settings} & set(cdk_json_context())
    assert known <= {"allowedSecurityGroupIds", "alarmEmails"}, known
    for key in ("region", "imageTag", "domainName", "certificateArn", "dockerHubSecretArn"):
        assert key in settings, key


def project(directory: Path) -> Path:
    """A project directory as the README leaves it: cdk.json with the settings, app.py."""
    directory.mkdir()
    document = json.loads((INFRA_DIR / "cdk.json").read_text())
    document["context"].update(documented_settings())
    (directory / "cdk.json").write_text(json.dumps(document, indent=2))
    (directory / "app.py").symlink_to(INFRA_DIR / "app.py")
    return directory


def deployed(shell: GuideShell, command: str, directory: Path) -> dict[str, Any]:
    """Run ``command`` as the README gives it in ``directory``; the template it deployed."""
    before = len(shell.deploys())
    shell.run(command, directory)
    deploys = shell.deploys()
    assert len(deploys) == before + 1, f"{command!r} deployed {len(deploys) - before} times"
    assert deploys[-1].cwd == directory
    return deploys[-1].template(STACK)


def test_first_deploy_and_redeploy_as_documented_build_the_same_stack(
    tmp_path: Path, npx: str
) -> None:
    shell = GuideShell(tmp_path / "shell", npx=npx, aws_python=None)
    (first,) = markdown.shell_commands(section("5. Deploy"), "aws-cdk@2 deploy")
    (again,) = markdown.shell_commands(
        section("Redeploying, a new image, a changed setting"), "aws-cdk@2 deploy"
    )
    first_template = deployed(shell, first, project(tmp_path / "first"))
    again_template = deployed(shell, again, project(tmp_path / "again"))
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
