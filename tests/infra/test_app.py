"""``app.py``, the entry point ``cdk synth`` runs, works offline and explains a missing region."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_proxy_infra import application
from registry_proxy_infra.application import cdk_json_context

from .scenarios import REGION, REQUIRED_CONTEXT

INFRA_DIR = Path(application.__file__).resolve().parents[1]


def test_app_py_synthesizes_without_credentials_or_network(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env |= {
        "CDK_OUTDIR": str(tmp_path),  # what the CDK CLI sets
        "CDK_DEFAULT_REGION": "us-east-1",  # what the CLI sets when nothing says otherwise
        # what the CLI passes: cdk.json's context, here with the deployment's settings
        "CDK_CONTEXT_JSON": json.dumps({**cdk_json_context(), **REQUIRED_CONTEXT}),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        # a tripwire: any attempt to reach the network through a proxy fails at once
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, str(INFRA_DIR / "app.py")],
        cwd=INFRA_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "missing" not in manifest, manifest["missing"]
    template = json.loads((tmp_path / "RegistryProxy.template.json").read_text())
    assert template["Outputs"]["MirrorUrl"]["Value"] == f"https://{REQUIRED_CONTEXT['domainName']}"
    assert manifest["artifacts"]["RegistryProxy"]["environment"].endswith(f"/{REGION}")
    # app.py applies cdk-nag itself, so `cdk synth` fails on a new unacknowledged finding
    reports = list(tmp_path.glob("AwsSolutions-*NagReport.csv"))
    assert reports
    assert "Non-Compliant" not in reports[0].read_text()


def test_main_without_the_settings_exits_with_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDK_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("CDK_CONTEXT_JSON", raising=False)
    assert application.main() == 2
    out = capsys.readouterr().out
    assert "infra/cdk.json" in out
    for key in ("region", "imageTag", "domainName", "certificateArn", "dockerHubSecretArn"):
        assert f'"{key}"' in out


def test_readme_creates_the_image_repository_tag_immutable() -> None:
    """The stack names its image by tag; only an immutable tag names one build for ever."""
    readme = (INFRA_DIR / "README.md").read_text()
    create = readme[readme.index("aws ecr create-repository") :].split("\n\n", 1)[0]
    assert "--image-tag-mutability IMMUTABLE" in create
