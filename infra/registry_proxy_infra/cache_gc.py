"""The cache's upkeep in AWS: a scheduled ``registry-proxy cache gc`` and the bucket's age rules.

Content (blobs, manifests, tag records) is deleted by *last use*, never by age: the proxy
tasks sweep every hour (``PROXY_CACHE_EXPIRE_UNUSED``) and a scheduled Fargate task runs the
same sweep once a day, so expiry goes on while the service is scaled in or being redeployed.
It runs the proxy's own task definition with its command replaced, so it has the same image,
settings and permissions (the task role may read, write, list and delete under the cache
prefix) and nothing new to keep in step.

The bucket's age-based lifecycle rules cover only what has no use to go by:

- incomplete multipart uploads (a task killed while storing a blob), after a day;
- the last-use records under ``<prefix>/access/``. Sweeps merge them into a fresh record every
  hour, so an old one is a leftover; and a record older than the expiry window only holds uses
  older than the window, which change no decision. They expire a day after the window, or after
  ``ACCESS_RECORD_DAYS_WITHOUT_EXPIRY`` when expiry is off.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from cdk_nag import NagPackSuppression, NagSuppressions, RegexAppliesTo
from constructs import Construct

#: Daily, at a quiet hour (UTC).
GC_SCHEDULE = events.Schedule.cron(minute="17", hour="3")
ACCESS_RECORD_DAYS_WITHOUT_EXPIRY = 90
INCOMPLETE_UPLOAD_DAYS = 1


def cache_lifecycle_rules(prefix: str, expire_unused_days: int | None) -> list[s3.LifecycleRule]:
    """The cache bucket's lifecycle rules: nothing that ages content."""
    record_days = (
        expire_unused_days + 1
        if expire_unused_days is not None
        else ACCESS_RECORD_DAYS_WITHOUT_EXPIRY
    )
    return [
        s3.LifecycleRule(
            id="abort-incomplete-multipart-uploads",
            abort_incomplete_multipart_upload_after=Duration.days(INCOMPLETE_UPLOAD_DAYS),
        ),
        s3.LifecycleRule(
            id="expire-stale-last-use-records",
            prefix=f"{prefix}/access/",
            expiration=Duration.days(record_days),
        ),
    ]


def expire_unused_setting(days: int | None) -> dict[str, str]:
    """``PROXY_CACHE_EXPIRE_UNUSED`` for the proxy's environment (nothing when off)."""
    return {} if days is None else {"PROXY_CACHE_EXPIRE_UNUSED": f"{days}d"}


class ScheduledCacheGc(Construct):
    """An EventBridge rule that starts one ``registry-proxy cache gc`` task on a schedule."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster: ecs.ICluster,
        task_definition: ecs.FargateTaskDefinition,
        container_name: str,
        security_group: ec2.ISecurityGroup,
        subnets: ec2.SubnetSelection,
        schedule: events.Schedule = GC_SCHEDULE,
    ) -> None:
        super().__init__(scope, construct_id)
        # EventBridge's role: ecs:RunTask of this task definition on this cluster, iam:PassRole
        # of its two roles, ecs:TagResource on the tasks it starts (the target adds them).
        self.role = iam.Role(
            self,
            "RunTaskRole",
            assumed_by=iam.ServicePrincipal("events.amazonaws.com"),
            description="registry-proxy: start the scheduled cache gc task",
        )
        self.rule = events.Rule(
            self,
            "Schedule",
            description="registry-proxy: sweep the cache (expiry by last use, record merging)",
            schedule=schedule,
        )
        self.rule.add_target(
            targets.EcsTask(
                cluster=cluster,
                task_definition=task_definition,
                task_count=1,
                container_overrides=[
                    targets.ContainerOverride(
                        container_name=container_name, command=["cache", "gc"]
                    )
                ],
                subnet_selection=subnets,
                security_groups=[security_group],
                assign_public_ip=False,
                platform_version=ecs.FargatePlatformVersion.LATEST,
                role=self.role,
                retry_attempts=2,
                max_event_age=Duration.hours(2),
            )
        )
        NagSuppressions.add_resource_suppressions(
            self.role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason=(
                        "ecs:TagResource on the tasks the rule starts: task ids exist only once "
                        "a task runs, so the resource is every task of this one cluster."
                    ),
                    applies_to=[
                        RegexAppliesTo(
                            regex=r"/^Resource::arn:[^:]+:ecs:[^:]+:\*:task\/<[A-Za-z0-9]+>\/\*$/g"
                        )
                    ],
                )
            ],
            apply_to_children=True,
        )
