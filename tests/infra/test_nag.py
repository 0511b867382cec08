"""cdk-nag's AwsSolutions pack finds nothing that is not acknowledged, with a reason, in code."""

from __future__ import annotations

import re

from aws_cdk.assertions import Annotations, Match

from .scenarios import Synthesized

# Every accepted finding: (rule, construct path below the stack).  Adding one is a decision to
# review, so this list is spelled out rather than derived.
EXPECTED_SUPPRESSIONS = {
    ("AwsSolutions-IAM5", "TaskRole/DefaultPolicy/Resource"),
    ("AwsSolutions-IAM5", "TaskDefinition/ExecutionRole/DefaultPolicy/Resource"),
    ("AwsSolutions-ECS2", "TaskDefinition/Resource"),
    ("AwsSolutions-IAM5", "CacheGc/RunTaskRole/DefaultPolicy/Resource"),
}
# The custom scenario runs a public image (no ECR authorization token, so the execution role
# needs no wildcard). It also turns Container Insights off (a setting, so acknowledged); its ECS
# Exec adds a wildcard to the task role's policy, covered by that policy's IAM5 entry for exactly
# "Resource::*".
EXPECTED_SUPPRESSIONS_CUSTOM = EXPECTED_SUPPRESSIONS - {
    ("AwsSolutions-IAM5", "TaskDefinition/ExecutionRole/DefaultPolicy/Resource"),
} | {("AwsSolutions-ECS4", "Cluster/Resource")}


def test_rules_ran(any_synth: Synthesized) -> None:
    """The report covers the rules that matter here, so an empty finding list means something."""
    rules = {row["Rule ID"] for row in any_synth.nag_rows()}
    expected = {
        "AwsSolutions-EC23",  # no security group open to the world
        "AwsSolutions-ECS4",  # container insights
        "AwsSolutions-ECS7",  # container logging
        "AwsSolutions-ELB2",  # load balancer access logs
        "AwsSolutions-IAM4",  # no AWS managed policies
        "AwsSolutions-IAM5",  # no unexplained wildcards
        "AwsSolutions-S1",  # bucket access logs
        "AwsSolutions-S2",  # public access block
        "AwsSolutions-S10",  # TLS only
    }
    if any_synth.name == "default":
        expected.add("AwsSolutions-VPC7")  # flow logs on the VPC the stack creates
    assert expected <= rules, sorted(expected - rules)


def test_no_unsuppressed_findings(any_synth: Synthesized) -> None:
    open_findings = [
        f"{row['Rule ID']} ({row['Rule Level']}) on {row['Resource ID']}: {row['Rule Info']}"
        for row in any_synth.nag_rows()
        if row["Compliance"] not in ("Compliant", "Suppressed")
    ]
    assert open_findings == []


def test_no_nag_errors_or_warnings_annotated(any_synth: Synthesized) -> None:
    annotations = Annotations.from_stack(any_synth.stack)
    pattern = Match.string_like_regexp(r"^(AwsSolutions-|CdkNagValidationFailure)")
    errors = annotations.find_error("*", pattern)
    warnings = annotations.find_warning("*", pattern)
    assert [message.entry.data for message in errors + warnings] == []


def test_suppressions_are_the_reviewed_ones(any_synth: Synthesized) -> None:
    stack_name = any_synth.stack.stack_name
    suppressed = {
        (row["Rule ID"], row["Resource ID"].removeprefix(f"{stack_name}/"))
        for row in any_synth.nag_rows()
        if row["Compliance"] == "Suppressed"
    }
    expected = EXPECTED_SUPPRESSIONS_CUSTOM if any_synth.name == "custom" else EXPECTED_SUPPRESSIONS
    assert suppressed == expected


def test_every_suppression_has_a_real_reason(any_synth: Synthesized) -> None:
    for row in any_synth.nag_rows():
        if row["Compliance"] != "Suppressed":
            continue
        # IAM5 reasons are prefixed with the finding they cover, e.g. "[Resource::*] ..."
        reason = re.sub(r"^\[[^\]]+\]\s*", "", row["Exception Reason"])
        assert len(reason.split()) >= 12, f"{row['Rule ID']} on {row['Resource ID']}: {reason!r}"


def test_wildcard_suppressions_name_the_exact_finding(any_synth: Synthesized) -> None:
    """IAM5 is accepted only for the findings listed, never for the rule as a whole."""
    for row in any_synth.nag_rows():
        if row["Rule ID"] == "AwsSolutions-IAM5" and row["Compliance"] == "Suppressed":
            finding = re.match(r"^\[Resource::([^\]]+)\]", row["Exception Reason"])
            assert finding is not None, row
            resource = finding.group(1)
            tasks_of_the_cluster = r"arn:[^:]+:ecs:[^:]+:\*:task/<Cluster[A-Za-z0-9]+>/\*"
            assert (
                resource == "*"
                or resource.endswith(".Arn>/cache/*")
                or re.fullmatch(tasks_of_the_cluster, resource)  # ecs:TagResource (cache gc)
            ), row
