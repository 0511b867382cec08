"""cfn-lint finds nothing wrong with the synthesized templates."""

from __future__ import annotations

import json

from cfnlint.api import ManualArgs, lint  # type: ignore[import-untyped]

from .scenarios import REGION, Synthesized

# W3005: CDK makes the ECS service depend explicitly on the listener and target group so that
# the target group is attached before the service registers tasks; one of those dependencies
# is also implied by a Ref, which cfn-lint calls redundant. Harmless, and not ours to change.
IGNORED_CHECKS = ["W3005"]


def test_template_passes_cfn_lint(any_synth: Synthesized) -> None:
    matches = lint(
        json.dumps(any_synth.json),
        config=ManualArgs(regions=[REGION], ignore_checks=IGNORED_CHECKS),
    )
    findings = [
        f"{match.rule.id} {match.message} ({'/'.join(map(str, match.path))})" for match in matches
    ]
    assert findings == []
