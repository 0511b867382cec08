"""Building the CDK app: shared by ``app.py`` (what ``cdk synth`` runs) and the tests."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from registry_proxy_infra.config import ConfigError, ProxyStackConfig
from registry_proxy_infra.stack import RegistryProxyStack

INFRA_DIR = Path(__file__).resolve().parent.parent
CDK_JSON = INFRA_DIR / "cdk.json"
# Context keys of the settings' shape; the CDK's own (feature flags "@aws-cdk/...", the CLI's
# "aws:cdk:...", lookups "name:account=...") all hold a "@" or a ":".
_SETTING_SHAPE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """The ``context`` block of cdk.json: defaults and feature flags, as the CLI passes them."""
    document = json.loads(path.read_text(encoding="utf-8"))
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise ConfigError(f"{path}: 'context' must be an object")
    return context


def unknown_settings(context: Mapping[str, Any]) -> list[str]:
    """Keys shaped like settings that no setting has: a misspelt key would keep its default."""
    known = [row.key for _, row in ProxyStackConfig.rows()]
    found = []
    for key in context:
        if _SETTING_SHAPE.match(key) and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            found.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return found


def build_app(
    context: Mapping[str, Any] | None = None, *, outdir: str | None = None
) -> tuple[cdk.App, RegistryProxyStack]:
    """Create the app and its one stack.

    The app starts from cdk.json's context (settings and feature flags) updated with
    ``context``; when the CDK CLI runs the app, what it passes (cdk.json and ``-c``) wins over
    both, so ``python app.py`` and ``cdk synth`` build the same template.  The region is a
    setting like any other; the account is deliberately left open, so synthesis performs no
    lookups.
    """
    merged = cdk_json_context()
    merged.update(context or {})
    app = cdk.App(context=merged, outdir=outdir)
    # Everything the app sees: cdk.json, and when the CLI runs it, cdk.context.json,
    # ~/.cdk.json and -c as well.
    unknown = unknown_settings(app.node.get_all_context())
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)}: the settings are listed in infra/README.md"
        )
    config = ProxyStackConfig.from_context(app.node.try_get_context)
    missing = config.missing()
    if missing:
        raise ConfigError(
            "the deployment's settings go in the context of infra/cdk.json (every cdk synth and "
            "cdk deploy reads them there), and these are missing:\n  " + "\n  ".join(missing)
        )
    stack = RegistryProxyStack(
        app,
        config.stack_name,
        config=config,
        env=cdk.Environment(region=config.region),
        description="registry-proxy: pull-through cache for Docker Hub on Fargate",
    )
    cdk.Tags.of(stack).add("project", "registry-proxy")
    if config.nag:
        cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack


def main() -> int:
    try:
        app, _ = build_app()
    except ConfigError as exc:
        print(f"registry-proxy infra: {exc}")
        return 2
    app.synth()
    return 0
