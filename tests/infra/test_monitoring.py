"""Alarms, the alarm topic, the dashboard, log metrics and saved queries in the template."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match
from registry_proxy_infra.monitoring import LOG_METRICS

from .scenarios import Synthesized
from .test_stack import environment, ref

PROXY_SOURCE = Path(__file__).resolve().parents[2] / "proxy"


def namespace(synth: Synthesized) -> str:
    found: str = environment(synth)["PROXY_CLOUDWATCH_NAMESPACE"]
    return found


def alarms(synth: Synthesized) -> dict[str, dict[str, Any]]:
    """Alarm properties by the name's last part (``<stack>-HealthyHostsBelowMinimum``)."""
    found = {}
    for alarm in synth.resources("AWS::CloudWatch::Alarm").values():
        properties = alarm["Properties"]
        found[properties["AlarmName"].rsplit("-", 1)[1]] = properties
    return found


def topic_id(synth: Synthesized) -> str:
    return synth.logical_id("AWS::SNS::Topic")


# ---------------------------------------------------------------------------- the topic


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(any_synth: Synthesized) -> None:
    topic = any_synth.only("AWS::SNS::Topic")
    key_id = topic["KmsMasterKeyId"]["Fn::GetAtt"][0]
    key = any_synth.resources("AWS::KMS::Key")[key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    publish = [
        statement
        for statement in key["KeyPolicy"]["Statement"]
        if statement.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert publish and publish[0]["Action"] == ["kms:Decrypt", "kms:GenerateDataKey*"]
    # TLS only for publishers
    policy = any_synth.only("AWS::SNS::TopicPolicy")
    denials = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert denials and denials[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_subscribers_are_a_setting(any_synth: Synthesized) -> None:
    subscriptions = sorted(
        (item["Properties"]["Protocol"], item["Properties"]["Endpoint"])
        for item in any_synth.resources("AWS::SNS::Subscription").values()
    )
    if any_synth.name == "default":
        assert subscriptions == []
        return
    assert subscriptions == [
        ("email", "builds@example.com"),
        ("email", "ops@example.com"),
        ("https", "https://events.example.com/sns"),
    ]
    for item in any_synth.resources("AWS::SNS::Subscription").values():
        assert item["Properties"]["TopicArn"] == ref(topic_id(any_synth))


def test_synth_warns_when_no_one_hears_the_alarms(any_synth: Synthesized) -> None:
    warnings = Annotations.from_stack(any_synth.stack).find_warning(
        "*", Match.string_like_regexp("No one is subscribed to the alarm topic")
    )
    if any_synth.name == "custom":  # subscribers set
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert "alarmEmails" in str(warnings[0].entry.data)


def test_outputs_name_the_topic_and_the_dashboard(any_synth: Synthesized) -> None:
    assert {"AlarmTopicArn", "DashboardName"} <= set(any_synth.json["Outputs"])


# ---------------------------------------------------------------------------- alarms


def test_every_alarm_notifies_the_topic_when_it_fires_and_clears(any_synth: Synthesized) -> None:
    for name, alarm in alarms(any_synth).items():
        assert alarm["AlarmActions"] == [ref(topic_id(any_synth))], name
        assert alarm["OKActions"] == [ref(topic_id(any_synth))], name
        assert len(alarm["AlarmDescription"].split()) >= 8, name


def test_the_alarms_watch_what_the_issue_lists(any_synth: Synthesized) -> None:
    own = namespace(any_synth)
    expected = {
        "HealthyHostsBelowMinimum": ("AWS/ApplicationELB", "HealthyHostCount"),
        "TargetServerErrors": ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"),
        "LoadBalancerServerErrors": ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"),
        "RunningTasksBelowMinimum": ("ECS/ContainerInsights", "RunningTaskCount"),
        "CpuHigh": ("AWS/ECS", "CPUUtilization"),
        "MemoryHigh": ("AWS/ECS", "MemoryUtilization"),
        "SpoolDiskHigh": (own, "SpoolDiskUsedPercent"),
        "UpstreamQuotaLow": (own, "UpstreamQuotaLow"),
        "StorageErrors": (own, "StorageErrorLogs"),
        "BlobFetchFailures": (own, "BlobFetchFailures"),
        "StaleServes": (own, "StaleServes"),
        "SpoolFull": (own, "SpoolFull"),
        "UpstreamAuthFailures": (own, "UpstreamAuthFailures"),
    }
    if any_synth.name == "custom":  # Container Insights off: no running-task metric exists
        del expected["RunningTasksBelowMinimum"]
    found = {name: (a["Namespace"], a["MetricName"]) for name, a in alarms(any_synth).items()}
    assert found == expected


def test_host_and_task_floors_are_the_minimum_task_count(any_synth: Synthesized) -> None:
    minimum = 3 if any_synth.name == "custom" else 2
    floors = {
        name: alarm for name, alarm in alarms(any_synth).items() if name.endswith("BelowMinimum")
    }
    assert floors
    for name, alarm in floors.items():
        assert alarm["Threshold"] == minimum, name
        assert alarm["ComparisonOperator"] == "LessThanThreshold", name
        assert alarm["Statistic"] == "Minimum", name
        # no data means no healthy host reporting at all
        assert alarm["TreatMissingData"] == "breaching", name


def test_healthy_hosts_are_counted_on_the_proxys_target_group(default_synth: Synthesized) -> None:
    alarm = alarms(default_synth)["HealthyHostsBelowMinimum"]
    dimensions = {item["Name"]: item["Value"] for item in alarm["Dimensions"]}
    group = default_synth.logical_id("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert dimensions["TargetGroup"] == {"Fn::GetAtt": [group, "TargetGroupFullName"]}


# ---------------------------------------------------------------------------- log metrics


def filter_matches(pattern: str, event: Mapping[str, Any]) -> bool:
    """CloudWatch's JSON filter syntax, the part the stack uses: ``$.key = "value"`` (a trailing
    ``*`` matches any rest), ``!=``, ``&&``, ``||`` and parentheses."""

    def compare(match: re.Match[str]) -> str:
        key, operator, wanted = match.groups()
        value = event.get(key)
        if not isinstance(value, str):
            equal = False
        elif wanted.endswith("*"):
            equal = value.startswith(wanted[:-1])
        else:
            equal = value == wanted
        return str(equal if operator == "=" else not equal)

    body = pattern.strip()
    assert body.startswith("{") and body.endswith("}"), pattern
    expression = re.sub(r'\$\.(\w+)\s*(!=|=)\s*"([^"]*)"', compare, body[1:-1])
    expression = expression.replace("&&", " and ").replace("||", " or ")
    assert re.fullmatch(r"[\sA-Za-z()]*", expression), expression  # nothing left unparsed
    return bool(eval(expression))


# One JSON log line of the proxy per metric (as PROXY_LOG_FORMAT=json writes them), and lines
# that must not count.
MATCHING: dict[str, dict[str, Any]] = {
    "UpstreamQuotaLow": {"event": "upstream.quota_low", "level": "warning", "remaining": 3},
    "StorageErrorLogs": {"event": "storage.error", "level": "warning", "detail": "timeout"},
    "BlobFetchFailures": {"event": "blob.fetch_failed", "level": "info", "error": "reset"},
    "StaleServes": {"event": "request", "level": "info", "cache": "stale", "status": 200},
    "SpoolFull": {"event": "spool.full", "level": "warning", "room": 0},
}
NOT_MATCHING: list[dict[str, Any]] = [
    {"event": "request", "level": "info", "cache": "hit", "status": 200},
    {"event": "storage.recovered", "level": "info", "removed_partial_writes": 1},
    {"event": "blob.fetched", "level": "info"},
]


@pytest.mark.parametrize("metric", LOG_METRICS, ids=lambda metric: metric.name)
def test_log_metric_filters_count_the_proxys_lines(any_synth: Synthesized, metric: Any) -> None:
    filters = {
        item["Properties"]["MetricTransformations"][0]["MetricName"]: item["Properties"]
        for item in any_synth.resources("AWS::Logs::MetricFilter").values()
    }
    found = filters[metric.name]
    assert found["FilterPattern"] == metric.pattern
    assert found["LogGroupName"] == ref(any_synth.logical_id("AWS::Logs::LogGroup"))
    transformation = found["MetricTransformations"][0]
    assert transformation["MetricNamespace"] == namespace(any_synth)
    assert filter_matches(metric.pattern, MATCHING[metric.name])
    for line in NOT_MATCHING:
        assert not filter_matches(metric.pattern, line), line


def test_the_events_counted_are_ones_the_proxy_logs() -> None:
    """A renamed event would leave its alarm silent for ever: the names must be in the code."""
    source = "\n".join(path.read_text() for path in PROXY_SOURCE.rglob("*.py"))
    for metric in LOG_METRICS:
        for event in re.findall(r'\$\.event = "([^"*]+)\*?"', metric.pattern):
            if event == "request":
                continue
            if event.endswith("."):
                assert re.search(rf'log\.(warning|error)\(\s*"{re.escape(event)}', source), event
            else:
                assert f'"{event}"' in source, event
    assert 'mark_cache("stale")' in source


# ---------------------------------------------------------------------------- EMF metrics


def emf_names_used(synth: Synthesized) -> set[str]:
    """Metric names of the proxy's namespace used by the dashboard and the alarms."""
    own = namespace(synth)
    body = json.dumps(synth.only("AWS::CloudWatch::Dashboard")["DashboardBody"])
    names = set(re.findall(rf'\\"{re.escape(own)}\\",\\"(\w+)\\"', body))
    names |= {alarm["MetricName"] for alarm in alarms(synth).values() if alarm["Namespace"] == own}
    return names - {metric.name for metric in LOG_METRICS}


def test_dashboard_and_alarms_use_metrics_the_proxy_reports(any_synth: Synthesized) -> None:
    cloudwatch = importlib.import_module("proxy.ops.cloudwatch")
    metrics_module = importlib.import_module("proxy.ops.metrics")
    client = importlib.import_module("proxy.upstream.client")
    metrics = metrics_module.Metrics()
    metrics.rate_limit("docker.io", client.RateLimit(100, 50, 21600, None), counted=True)
    reporter = cloudwatch.EmfReporter(metrics, "x", Path("/"), lambda _: None)
    reported = {
        metric["Name"]
        for document in reporter.report()
        for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    }
    used = emf_names_used(any_synth)
    assert {"CountedPulls", "CacheHits", "CacheMisses", "SpoolDiskUsedPercent"} <= used
    assert used <= reported, sorted(used - reported)


def test_dashboard_shows_fleet_pulls_and_the_hit_ratio(any_synth: Synthesized) -> None:
    body = json.dumps(any_synth.only("AWS::CloudWatch::Dashboard")["DashboardBody"])
    assert "Counted pulls" in body
    assert "100 * (hits + stale) / (hits + stale + misses)" in body
    assert '\\"type\\":\\"alarm\\"' in body


# ---------------------------------------------------------------------------- saved queries


def test_saved_logs_insights_queries(any_synth: Synthesized) -> None:
    queries = {
        item["Properties"]["Name"]: item["Properties"]
        for item in any_synth.resources("AWS::Logs::QueryDefinition").values()
    }
    prefix = f"{any_synth.stack.stack_name}/registry-proxy/"
    assert {name.removeprefix(prefix) for name in queries} == {
        "server errors",
        "slowest requests",
        "cache results over time",
        "misses by repository",
        "stale serves by repository",
        "upstream quota warnings",
        "warnings and errors by event",
    }
    log_group = ref(any_synth.logical_id("AWS::Logs::LogGroup"))
    for query in queries.values():
        assert query["LogGroupNames"] == [log_group]
    assert "status >= 500" in queries[f"{prefix}server errors"]["QueryString"]
