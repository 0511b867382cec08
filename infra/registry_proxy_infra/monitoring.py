"""Alarms, a dashboard, log metrics and saved queries: a broken proxy must not pass for a
rate limit.

Docker daemons fall back to Docker Hub without a word when their mirror fails, so builds keep
working (until the anonymous rate limit bites) and nobody notices the proxy is down. Every alarm
here goes to one SNS topic (subscribe email addresses or an HTTPS endpoint with the stack's
``alarmEmails`` / ``alarmHttpsEndpoints``, or point AWS Chatbot at the ``AlarmTopicArn`` output).

Metrics come from three places: the load balancer and ECS (AWS's own), the proxy's embedded
metric format lines (fleet totals: counted pulls, cache results, spool disk use, refusals of
the upstream account, requests served at once; see ``proxy/ops/cloudwatch.py``), and metric
filters on the proxy's JSON log (low upstream quota, storage errors, failed blob fetches, stale
serves, fetches streamed through memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Annotations, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from registry_proxy_infra.config import ProxyStackConfig

ONE_MINUTE = Duration.minutes(1)
FIVE_MINUTES = Duration.minutes(5)

# Thresholds. Counts are per five minutes unless said otherwise.
SERVER_ERRORS_PER_5_MIN = 10
CPU_PERCENT = 85
MEMORY_PERCENT = 85
SPOOL_DISK_PERCENT = 85
FAILED_FETCHES_PER_5_MIN = 5
STALE_SERVES_PER_15_MIN = 10

# The id of the synth-time warning given when no one is subscribed to the alarm topic.
ALARMS_UNHEARD = "registry-proxy:alarmsUnheard"


@dataclass(frozen=True, slots=True)
class LogMetric:
    """A metric counted from the proxy's JSON log lines."""

    name: str
    pattern: str
    description: str


# The proxy's event names (its log lines are JSON with "event" and "level").
LOG_METRICS = (
    LogMetric(
        "UpstreamQuotaLow",
        '{ $.event = "upstream.quota_low" }',
        "the upstream account's pull quota is nearly spent (PROXY_QUOTA_WARN_REMAINING)",
    ),
    LogMetric(
        "StorageErrorLogs",
        '{ ($.event = "storage.*") && ($.level = "warning" || $.level = "error") }',
        "the cache storage (S3) failed; the proxy serves without caching meanwhile",
    ),
    LogMetric(
        "BlobFetchFailures",
        '{ $.event = "blob.fetch_failed" || $.event = "blob.digest_mismatch" }',
        "upstream blob downloads that failed or did not verify",
    ),
    LogMetric(
        "StaleServes",
        '{ $.event = "request" && $.cache = "stale" }',
        "tags served from the cache because the upstream failed",
    ),
    LogMetric(
        "SpoolFull",
        '{ $.event = "spool.full" }',
        "upstream fetches that found no room on the spool disk and streamed through memory",
    ),
)


@dataclass(frozen=True, slots=True)
class Watched:
    """What the monitoring looks at."""

    config: ProxyStackConfig
    namespace: str
    cluster: ecs.ICluster
    service: ecs.FargateService
    load_balancer: elbv2.ApplicationLoadBalancer
    target_group: elbv2.ApplicationTargetGroup
    log_group: logs.ILogGroup


class Monitoring(Construct):
    """The alarm topic, the alarms, the dashboard and the saved Logs Insights queries."""

    def __init__(self, scope: Construct, construct_id: str, watched: Watched) -> None:
        super().__init__(scope, construct_id)
        self.watched = watched
        self.topic = self._topic()
        self.log_metrics = {metric.name: self._log_metric(metric) for metric in LOG_METRICS}
        self.alarms: list[cw.Alarm] = []
        self._alarms()
        self.dashboard = self._dashboard()
        self.queries = self._queries()
        CfnOutput(
            Stack.of(self),
            "AlarmTopicArn",
            value=self.topic.topic_arn,
            description="SNS topic of every alarm: subscribe people, chat (AWS Chatbot) or paging",
        )
        CfnOutput(Stack.of(self), "DashboardName", value=self.dashboard.dashboard_name)

    # ------------------------------------------------------------------ notification

    def _topic(self) -> sns.Topic:
        config = self.watched.config
        # Encrypted with a key of our own: the AWS managed SNS key does not let CloudWatch
        # alarms publish to the topic.
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="registry-proxy alarm topic encryption",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name="registry-proxy alarms",
            master_key=key,
            enforce_ssl=True,
        )
        if not (config.alarm_emails or config.alarm_https_endpoints):
            # Docker daemons fall back to Docker Hub silently: an alarm nobody hears is no alarm.
            Annotations.of(self).add_warning_v2(
                ALARMS_UNHEARD,
                "No one is subscribed to the alarm topic: set alarmEmails or alarmHttpsEndpoints "
                "in cdk.json, or subscribe to the AlarmTopicArn output (e.g. AWS Chatbot); "
                "otherwise a broken proxy looks like Docker Hub's rate limit",
            )
        for email in config.alarm_emails:
            topic.add_subscription(subscriptions.EmailSubscription(email))
        for url in config.alarm_https_endpoints:
            topic.add_subscription(
                subscriptions.UrlSubscription(url, protocol=sns.SubscriptionProtocol.HTTPS)
            )
        return topic

    # ------------------------------------------------------------------ metrics

    def _log_metric(self, metric: LogMetric) -> cw.Metric:
        logs.MetricFilter(
            self,
            f"{metric.name}Filter",
            log_group=self.watched.log_group,
            metric_namespace=self.watched.namespace,
            metric_name=metric.name,
            filter_pattern=logs.FilterPattern.literal(metric.pattern),
            metric_value="1",
        )
        return cw.Metric(
            namespace=self.watched.namespace,
            metric_name=metric.name,
            statistic="Sum",
            period=FIVE_MINUTES,
        )

    def emf(self, name: str, statistic: str = "Sum", **dimensions: str) -> cw.Metric:
        """A metric from the proxy's embedded-metric-format lines (proxy/ops/cloudwatch.py)."""
        return cw.Metric(
            namespace=self.watched.namespace,
            metric_name=name,
            statistic=statistic,
            period=FIVE_MINUTES,
            dimensions_map=dimensions or None,
        )

    def running_tasks(self) -> cw.Metric:
        watched = self.watched
        return cw.Metric(
            namespace="ECS/ContainerInsights",
            metric_name="RunningTaskCount",
            dimensions_map={
                "ClusterName": watched.cluster.cluster_name,
                "ServiceName": watched.service.service_name,
            },
            statistic="Minimum",
            period=ONE_MINUTE,
        )

    def cache_hit_ratio(self) -> cw.MathExpression:
        return cw.MathExpression(
            expression="100 * (hits + stale) / (hits + stale + misses)",
            using_metrics={
                "hits": self.emf("CacheHits"),
                "stale": self.emf("CacheStale"),
                "misses": self.emf("CacheMisses"),
            },
            label="cache hit ratio (%)",
            period=FIVE_MINUTES,
        )

    # ------------------------------------------------------------------ alarms

    def _alarm(
        self,
        name: str,
        metric: cw.IMetric,
        *,
        threshold: float,
        below: bool = False,
        periods: int = 1,
        missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING,
        description: str,
    ) -> cw.Alarm:
        alarm = cw.Alarm(
            self,
            name,
            alarm_name=f"{Stack.of(self).stack_name}-{name}",
            alarm_description=description,
            metric=metric,
            threshold=threshold,
            comparison_operator=(
                cw.ComparisonOperator.LESS_THAN_THRESHOLD
                if below
                else cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
            ),
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            treat_missing_data=missing,
        )
        action = cw_actions.SnsAction(self.topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
        self.alarms.append(alarm)
        return alarm

    def _alarms(self) -> None:
        watched = self.watched
        config = watched.config
        self._alarm(
            "HealthyHostsBelowMinimum",
            watched.target_group.metrics.healthy_host_count(statistic="Minimum", period=ONE_MINUTE),
            threshold=config.min_tasks,
            below=True,
            periods=3,
            missing=cw.TreatMissingData.BREACHING,
            description=(
                f"Fewer than minTasks={config.min_tasks} tasks pass the load balancer's health "
                "check (a spool they cannot write, or tasks crashing). Builds fall back to Docker "
                "Hub silently meanwhile."
            ),
        )
        self._alarm(
            "TargetServerErrors",
            watched.target_group.metrics.http_code_target(
                elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=FIVE_MINUTES, statistic="Sum"
            ),
            threshold=SERVER_ERRORS_PER_5_MIN,
            description=(
                "The proxy answered 5xx: the upstream failing with nothing cached (503), or a "
                "fault; see the saved query 'server errors'."
            ),
        )
        self._alarm(
            "LoadBalancerServerErrors",
            watched.load_balancer.metrics.http_code_elb(
                elbv2.HttpCodeElb.ELB_5XX_COUNT, period=FIVE_MINUTES, statistic="Sum"
            ),
            threshold=SERVER_ERRORS_PER_5_MIN,
            description=(
                "The load balancer itself answered 5xx: no healthy target, or tasks closing "
                "connections."
            ),
        )
        if config.container_insights:
            self._alarm(
                "RunningTasksBelowMinimum",
                self.running_tasks(),
                threshold=config.min_tasks,
                below=True,
                periods=3,
                missing=cw.TreatMissingData.BREACHING,
                description=(
                    f"Fewer than minTasks={config.min_tasks} tasks are running: tasks fail to "
                    "start (image, secret, start-up check) or keep being replaced."
                ),
            )
        self._alarm(
            "CpuHigh",
            watched.service.metric_cpu_utilization(period=FIVE_MINUTES, statistic="Average"),
            threshold=CPU_PERCENT,
            periods=3,
            description=(
                f"Average CPU above {CPU_PERCENT}% for 15 minutes: scaling has reached maxTasks "
                f"={config.max_tasks} or cannot keep up."
            ),
        )
        self._alarm(
            "MemoryHigh",
            watched.service.metric_memory_utilization(period=FIVE_MINUTES, statistic="Maximum"),
            threshold=MEMORY_PERCENT,
            periods=2,
            description=(
                f"Memory above {MEMORY_PERCENT}% for 10 minutes: tasks risk being killed; lower "
                "PROXY_MAX_UPSTREAM_FETCHES or raise memoryMiB."
            ),
        )
        self._alarm(
            "SpoolDiskHigh",
            self.emf("SpoolDiskUsedPercent", statistic="Maximum"),
            threshold=SPOOL_DISK_PERCENT,
            periods=2,
            description=(
                f"A task's ephemeral storage (the spool) is over {SPOOL_DISK_PERCENT}% full; "
                "fetches that find no room stream through memory, slower and without a disk copy "
                "for late clients. Raise ephemeralStorageGiB."
            ),
        )
        metrics = self.log_metrics
        self._alarm(
            "UpstreamQuotaLow",
            metrics["UpstreamQuotaLow"],
            threshold=1,
            description=(
                "The Docker Hub account's pull quota is nearly spent: uncached images will get "
                "429 until the window resets. See /status (ECS Exec) or the dashboard."
            ),
        )
        self._alarm(
            "StorageErrors",
            metrics["StorageErrorLogs"],
            threshold=1,
            description=(
                "The S3 cache failed: every task serves without caching, and every miss goes "
                "upstream (quota). Check the bucket, the endpoint and the task role."
            ),
        )
        self._alarm(
            "BlobFetchFailures",
            metrics["BlobFetchFailures"],
            threshold=FAILED_FETCHES_PER_5_MIN,
            description=(
                "Upstream blob downloads are failing or not verifying; see the saved query "
                "'warnings and errors by event'."
            ),
        )
        self._alarm(
            "StaleServes",
            metrics["StaleServes"].with_(period=Duration.minutes(15)),
            threshold=STALE_SERVES_PER_15_MIN,
            description=(
                "Tags are being served from the cache because the upstream fails (429, 5xx, "
                "timeouts): builds work, but new tags do not arrive."
            ),
        )
        self._alarm(
            "SpoolFull",
            metrics["SpoolFull"],
            threshold=1,
            description=(
                "An upstream fetch found no room on the spool disk and streamed to its clients "
                "through memory instead (at most 8 MiB ahead of the slowest); nothing was "
                "refused, but many such fetches at once slow every client. Raise "
                "ephemeralStorageGiB, or spoolPerFetchMiB to plan fewer fetches at once."
            ),
        )
        self._alarm(
            "UpstreamAuthFailures",
            self.emf("UpstreamAuthFailures"),
            threshold=1,
            description=(
                "Docker Hub refused the proxy's account (401 or 403 from its token service): the "
                "access token expired or was revoked, or the secret holds a wrong value. Uncached "
                "images fail until a fresh token is in the secret and the tasks restart (see "
                "infra/README.md, 'The Docker Hub account')."
            ),
        )

    # ------------------------------------------------------------------ dashboard

    def _dashboard(self) -> cw.Dashboard:
        watched = self.watched
        balancer = watched.load_balancer.metrics
        targets = watched.target_group.metrics
        service = watched.service
        health: list[cw.IMetric] = [
            targets.healthy_host_count(statistic="Minimum", period=ONE_MINUTE)
        ]
        if watched.config.container_insights:
            health.append(self.running_tasks())
        log_counts: list[cw.IMetric] = [
            self.log_metrics[metric.name].with_(label=metric.name) for metric in LOG_METRICS
        ]
        dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{Stack.of(self).stack_name}-registry-proxy",
            default_interval=Duration.hours(6),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Requests and server errors (load balancer)",
                left=[balancer.request_count(period=FIVE_MINUTES)],
                right=[
                    targets.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT),
                    balancer.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT),
                ],
                width=8,
            ),
            cw.GraphWidget(title="Healthy hosts and running tasks", left=health, width=8),
            cw.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=8, height=6),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Counted pulls (manifest GETs upstream, all tasks)",
                left=[self.emf("CountedPulls")],
                right=[
                    self.emf("QuotaRemaining", statistic="Minimum", Upstream="docker.io"),
                    self.emf("UpstreamAuthFailures"),
                ],
                width=8,
            ),
            cw.GraphWidget(
                title="Cache hit ratio and lookups",
                left=[self.cache_hit_ratio()],
                right=[self.emf("CacheHits"), self.emf("CacheStale"), self.emf("CacheMisses")],
                width=8,
            ),
            cw.GraphWidget(
                title="Bytes served, from cache and from upstream",
                left=[self.emf("BytesFromCache"), self.emf("BytesFromUpstream")],
                width=8,
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="CPU and memory (%)",
                left=[
                    service.metric_cpu_utilization(period=FIVE_MINUTES),
                    service.metric_memory_utilization(period=FIVE_MINUTES),
                ],
                width=8,
            ),
            cw.GraphWidget(
                title="Requests served at once per task (the scaling signal) and tasks",
                left=[self.emf("ConcurrentRequests", statistic="Average")],
                right=health,
                width=8,
            ),
            cw.GraphWidget(
                title="Spool disk used (%, fullest task) and fetches in flight",
                left=[self.emf("SpoolDiskUsedPercent", statistic="Maximum")],
                right=[self.emf("InFlightFetches", statistic="Maximum")],
                width=8,
            ),
            cw.GraphWidget(title="Counted from the log", left=log_counts, width=8),
        )
        return dashboard

    # ------------------------------------------------------------------ saved queries

    def _queries(self) -> list[logs.QueryDefinition]:
        prefix = f"{Stack.of(self).stack_name}/registry-proxy"
        log_group = self.watched.log_group
        request = 'event = "request"'
        queries = {
            "server errors": logs.QueryString(
                fields=["@timestamp", "status", "method", "path", "cache", "request_id"],
                filter_statements=[request, "status >= 500"],
                sort="@timestamp desc",
                limit=200,
            ),
            "slowest requests": logs.QueryString(
                fields=["@timestamp", "duration_ms", "bytes", "status", "cache", "path"],
                filter_statements=[request],
                sort="duration_ms desc",
                limit=100,
            ),
            "cache results over time": logs.QueryString(
                filter_statements=[request, 'cache != "-"'],
                stats_statements=["count(*) by cache, bin(5m)"],
            ),
            "misses by repository": logs.QueryString(
                filter_statements=[request, 'cache = "miss"'],
                stats_statements=["count(*) as misses by repository"],
                sort="misses desc",
                limit=50,
            ),
            "stale serves by repository": logs.QueryString(
                filter_statements=[request, 'cache = "stale"'],
                stats_statements=["count(*) as stale by repository, reference"],
                sort="stale desc",
                limit=50,
            ),
            "upstream quota warnings": logs.QueryString(
                fields=["@timestamp", "upstream", "remaining", "limit", "source"],
                filter_statements=['event = "upstream.quota_low"'],
                sort="@timestamp desc",
                limit=100,
            ),
            "warnings and errors by event": logs.QueryString(
                filter_statements=['level = "warning" or level = "error"'],
                stats_statements=["count(*) as count by event, level"],
                sort="count desc",
            ),
        }
        return [
            logs.QueryDefinition(
                self,
                "Query" + "".join(word.capitalize() for word in title.split()),
                query_definition_name=f"{prefix}/{title}",
                query_string=query,
                log_groups=[log_group],
            )
            for title, query in queries.items()
        ]
