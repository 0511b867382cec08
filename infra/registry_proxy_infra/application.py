"""Building the CDK app: shared by ``app.py`` (what ``cdk synth`` runs) and the tests."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from registry_proxy_infra.config import ConfigError, ProxyStackConfig
from registry_proxy_infra.stack import RegistryProxyStack

INFRA_DIR = Path(__file__).resolve().parent.parent
CDK_JSON = INFRA_DIR / "cdk.json"


def cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """The ``context`` block of cdk.json: defaults and feature flags, as the CLI passes them."""
    document = json.loads(path.read_text(encoding="utf-8"))
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise ConfigError(f"{path}: 'context' must be an object")
    return context


def build_app(
    context: Mapping[str, Any] | None = None,
    *,
    outdir: str | None = None,
    default_region: str | None = None,
) -> tuple[cdk.App, RegistryProxyStack]:
    """Create the app and its one stack.

    The app starts from cdk.json's context (defaults and feature flags) updated with
    ``context``; when the CDK CLI runs the app, what it passes (cdk.json and ``-c``) wins over
    both, so ``python app.py`` and ``cdk synth`` build the same template.  The region comes from the
    ``region`` context key or ``default_region`` (``CDK_DEFAULT_REGION`` when run by the CLI);
    the account is deliberately left open, so synthesis performs no lookups.
    """
    merged = cdk_json_context()
    merged.update(context or {})
    app = cdk.App(context=merged, outdir=outdir)
    config = ProxyStackConfig.from_context(app.node.try_get_context, default_region=default_region)
    if config.region is None:
        raise ConfigError(
            "no region: pass -c region=eu-west-1 (or set CDK_DEFAULT_REGION / an AWS profile "
            "region); the load balancer's access logging needs to know it"
        )
    if config.image_missing:
        raise ConfigError(
            "no image: pass -c imageTag=TAG (or -c imageDigest=sha256:...) for the image pushed "
            f"to the ECR repository {config.image_repository_name!r}, or -c imageUri=... or "
            "-c imageFromAsset=true"
        )
    stack = RegistryProxyStack(
        app,
        config.stack_name,
        config=config,
        env=cdk.Environment(region=config.region),
        description="registry-proxy: pull-through cache for Docker Hub on Fargate (internal ALB)",
    )
    cdk.Tags.of(stack).add("project", "registry-proxy")
    if config.nag:
        cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack


def main() -> int:
    try:
        app, _ = build_app(default_region=os.environ.get("CDK_DEFAULT_REGION"))
    except ConfigError as exc:
        print(f"registry-proxy infra: {exc}")
        return 2
    app.synth()
    return 0
