"""The proxy's service: cluster, task definition, Fargate service, its scaling and its logs.

Each task runs one proxy container with a read-only root filesystem, the spool on the task's
ephemeral storage, settings in the environment and the Docker Hub account as ECS secrets.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from registry_proxy_infra.cache_gc import expire_unused_setting
from registry_proxy_infra.config import ProxyStackConfig
from registry_proxy_infra.network import Network
from registry_proxy_infra.scaling import ServiceScaling
from registry_proxy_infra.upstream_account import UpstreamAccount

CONTAINER_NAME = "proxy"
CONTAINER_PORT = 5000
HTTPS_PORT = 443
# The root filesystem is read-only; downloads in progress go to the task's ephemeral storage,
# mounted where the image declares its spool VOLUME (owned by the proxy's user there: a Fargate
# bind mount anywhere else would be root's, mode 0755, and unwritable).
SPOOL_PATH = "/var/lib/registry-proxy/spool"
# Where the proxy's /metrics and /status answer when no operatorCidrs are given: only from
# inside the task (ECS Exec); the fleet's figures are in CloudWatch.
IN_TASK_ONLY = "127.0.0.1/32"

# The repository root holds the Dockerfile used with imageFromAsset=true.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
# Never sent to the Docker build context, whatever .dockerignore says.
ASSET_EXCLUDES = [
    "**/.git",
    "**/.venv",
    "**/node_modules",
    "**/__pycache__",
    "**/.mypy_cache",
    "**/.ruff_cache",
    "**/.pytest_cache",
    "**/.hypothesis",
    "**/*.egg-info",
    "**/cdk.out",
    "cache",
]

S3_CACHE_ACTIONS = [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]

RETENTION: dict[int, logs.RetentionDays] = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def metrics_namespace(stack_name: str) -> str:
    """CloudWatch namespace of the proxy's own metrics; one per stack."""
    return f"RegistryProxy/{stack_name}"


class ProxyService:
    """The proxy tasks and what they run with, built into ``scope`` under the construct ids
    they have always had (see stack.py)."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: ProxyStackConfig,
        network: Network,
        cache_bucket: s3.IBucket,
        account: UpstreamAccount,
    ) -> None:
        self.config = config
        self.network = network
        self.cache_bucket = cache_bucket
        self.account = account
        self.stack = Stack.of(scope)
        self.log_group = logs.LogGroup(
            scope,
            "ProxyLogGroup",
            retention=RETENTION[config.log_retention_days],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.security_group = ec2.SecurityGroup(
            scope,
            "ServiceSecurityGroup",
            vpc=self.network.vpc,
            description="registry-proxy tasks: port 5000 from the load balancer; HTTPS out",
            allow_all_outbound=False,
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(HTTPS_PORT),
            "HTTPS to the upstream registry (via NAT) and to AWS APIs and S3",
        )
        self.task_role = self._task_role(scope)
        self.task_definition = self._task_definition(scope)
        self.cluster = self._cluster(scope)
        # No desired count: a deployment would reset a scaled-out service to it. A new service
        # starts with one task and autoscaling raises it to minTasks at once.
        self.service = ecs.FargateService(
            scope,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            assign_public_ip=False,
            security_groups=[self.security_group],
            vpc_subnets=self.network.private_subnets,
            health_check_grace_period=Duration.seconds(60),
            platform_version=ecs.FargatePlatformVersion.LATEST,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
            enable_ecs_managed_tags=True,
            enable_execute_command=config.ecs_exec,
        )
        if config.ecs_exec:
            NagSuppressions.add_resource_suppressions(
                self.task_role,
                [
                    NagPackSuppression(
                        id="AwsSolutions-IAM5",
                        reason=(
                            "ECS Exec (the ecsExec setting) needs the ssmmessages channel "
                            "actions, which support no resource-level permissions, so AWS "
                            "requires Resource '*' for them."
                        ),
                        applies_to=["Resource::*"],
                    )
                ],
                apply_to_children=True,
            )
        self.scaling = ServiceScaling(
            self.service, config=config, namespace=metrics_namespace(self.stack.stack_name)
        )

    def _cluster(self, scope: Construct) -> ecs.Cluster:
        config = self.config
        cluster = ecs.Cluster(
            scope,
            "Cluster",
            vpc=self.network.vpc,
            container_insights_v2=(
                ecs.ContainerInsights.ENABLED
                if config.container_insights
                else ecs.ContainerInsights.DISABLED
            ),
        )
        if not config.container_insights:
            NagSuppressions.add_resource_suppressions(
                cluster,
                [
                    NagPackSuppression(
                        id="AwsSolutions-ECS4",
                        reason=(
                            "Container Insights is turned off by the containerInsights setting "
                            "(it is billed per metric); the proxy's own CloudWatch metrics, the "
                            "load balancer's and ECS's CPU and memory still feed the alarms."
                        ),
                    )
                ],
            )
        return cluster

    def _task_role(self, scope: Construct) -> iam.Role:
        """What the proxy itself may do: read and write cache objects, list the bucket."""
        role = iam.Role(
            scope,
            "TaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com").with_conditions(
                {"StringEquals": {"aws:SourceAccount": self.stack.account}}
            ),
            description="registry-proxy tasks: the cache bucket's objects under the cache prefix",
        )
        objects = self.cache_bucket.arn_for_objects(f"{self.config.cache_prefix}/*")
        role.add_to_policy(
            iam.PolicyStatement(sid="CacheObjects", actions=S3_CACHE_ACTIONS, resources=[objects])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="CacheBucketList",
                actions=["s3:ListBucket"],
                resources=[self.cache_bucket.bucket_arn],
            )
        )
        cfn_bucket = self.cache_bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        bucket_id = self.stack.resolve(cfn_bucket.logical_id)
        NagSuppressions.add_resource_suppressions(
            role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason=(
                        "Cache objects are named by digest and created at run time, so the "
                        "statement covers the objects under the cache prefix of this one bucket; "
                        "no other bucket, prefix or action is granted."
                    ),
                    applies_to=[f"Resource::<{bucket_id}.Arn>/{self.config.cache_prefix}/*"],
                )
            ],
            apply_to_children=True,
        )
        return role

    def _image(self, scope: Construct) -> ecs.ContainerImage:
        config = self.config
        if config.image_uri is not None:
            return ecs.ContainerImage.from_registry(config.image_uri)
        if config.image_from_asset:
            # Built by `cdk deploy` (needs Docker there); synth only copies the build context.
            return ecs.ContainerImage.from_asset(
                str(REPOSITORY_ROOT),
                file="Dockerfile",
                exclude=ASSET_EXCLUDES,
                platform=ecr_assets.Platform.LINUX_AMD64,
            )
        repository = ecr.Repository.from_repository_name(
            scope, "ImageRepository", config.image_repository_name
        )
        # A tag (the repository is tag-immutable) or a digest: each task runs the same build.
        reference = config.image_digest or config.image_tag
        assert reference is not None, "build_app refuses a deployment without an image"
        return ecs.ContainerImage.from_ecr_repository(repository, reference)

    def proxy_environment(self) -> dict[str, str]:
        """The proxy's settings, all non-secret (credentials go through ``secrets``)."""
        config = self.config
        environment = {
            "PROXY_LISTEN": f"0.0.0.0:{CONTAINER_PORT}",
            "PROXY_STORAGE": f"s3://{self.cache_bucket.bucket_name}/{config.cache_prefix}",
            "PROXY_UPSTREAM_URL": config.upstream_url,
            "PROXY_LOG_FORMAT": "json",
            "PROXY_LOG_LEVEL": config.log_level,
            "PROXY_TAG_TTL": str(config.tag_ttl_seconds),
            "PROXY_BLOB_REDIRECT": "true" if config.blob_redirect else "false",
            "PROXY_SHUTDOWN_GRACE": str(config.shutdown_grace_seconds),
            "PROXY_SPOOL_DIR": SPOOL_PATH,
            # The load balancer must give up on an idle connection before the proxy closes it,
            # or it may send a request down a connection that is being closed (a 502).
            "PROXY_CLIENT_IDLE_TIMEOUT": str(config.idle_timeout_seconds + 30),
            "PROXY_OPERATOR_CIDRS": ",".join(config.operator_cidrs) or IN_TASK_ONLY,
            "PROXY_CLOUDWATCH_NAMESPACE": metrics_namespace(self.stack.stack_name),
            "PROXY_CLOUDWATCH_INTERVAL": "60",
            **config.sizes.environment,
            "AWS_DEFAULT_REGION": self.stack.region,
            **expire_unused_setting(config.cache_expiration_days),
        }
        trusted = self.network.load_balancer_ranges()
        if trusted:
            # Only the load balancer's security group reaches the tasks, and the proxy believes
            # exactly one X-Forwarded-For entry, the one the balancer appended: clients in the
            # same ranges cannot pass for another address.
            environment["PROXY_TRUSTED_PROXIES"] = ",".join(trusted)
            environment["PROXY_TRUSTED_HOPS"] = "1"
        environment.update(config.extra_environment)
        return environment

    def _secrets(self) -> dict[str, ecs.Secret]:
        """The Docker Hub account, read by ECS from Secrets Manager; none when anonymous."""
        secret = self.account.secret
        if secret is None:
            return {}
        return {
            "PROXY_UPSTREAM_USERNAME": ecs.Secret.from_secrets_manager(secret, "username"),
            "PROXY_UPSTREAM_PASSWORD": ecs.Secret.from_secrets_manager(secret, "token"),
        }

    def _task_definition(self, scope: Construct) -> ecs.FargateTaskDefinition:
        config = self.config
        task_definition = ecs.FargateTaskDefinition(
            scope,
            "TaskDefinition",
            cpu=config.cpu,
            memory_limit_mib=config.memory_mib,
            ephemeral_storage_gib=config.ephemeral_storage_gib,
            task_role=self.task_role,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        task_definition.add_volume(name="spool")
        container = task_definition.add_container(
            CONTAINER_NAME,
            image=self._image(scope),
            essential=True,
            # ECS Exec's agent writes into the container, which a read-only root forbids.
            readonly_root_filesystem=not config.ecs_exec,
            port_mappings=[
                ecs.PortMapping(
                    container_port=CONTAINER_PORT, protocol=ecs.Protocol.TCP, name="http"
                )
            ],
            environment=self.proxy_environment(),
            secrets=self._secrets(),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="proxy",
                log_group=self.log_group,
                mode=ecs.AwsLogDriverMode.NON_BLOCKING,
                max_buffer_size=Size.mebibytes(25),
            ),
            # ECS sends SIGTERM, waits this long, then SIGKILL: the proxy drains in between.
            stop_timeout=Duration.seconds(config.stop_timeout_seconds),
            # ECS ignores the image's HEALTHCHECK; this runs the same command.
            health_check=ecs.HealthCheck(
                command=["CMD", "registry-proxy", "healthcheck"],
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                retries=3,
                start_period=Duration.seconds(15),
            ),
        )
        if task_definition.execution_role is not None:
            self.account.grant_read(task_definition.execution_role)
        container.add_mount_points(
            ecs.MountPoint(container_path=SPOOL_PATH, source_volume="spool", read_only=False)
        )
        if task_definition.execution_role is not None and config.image_uri is None:
            NagSuppressions.add_resource_suppressions(
                task_definition.execution_role,
                [
                    NagPackSuppression(
                        id="AwsSolutions-IAM5",
                        reason=(
                            "ecr:GetAuthorizationToken supports no resource-level permissions, "
                            "so AWS requires Resource '*' for it; the image pull actions are "
                            "limited to the one image repository."
                        ),
                        applies_to=["Resource::*"],
                    )
                ],
                apply_to_children=True,
            )
        NagSuppressions.add_resource_suppressions(
            task_definition,
            [
                NagPackSuppression(
                    id="AwsSolutions-ECS2",
                    reason=(
                        "The environment holds only non-secret settings (listen address, bucket "
                        "URL, log format, timeouts); the Docker Hub credentials are ECS secrets "
                        "read from Secrets Manager."
                    ),
                )
            ],
        )
        return task_definition
