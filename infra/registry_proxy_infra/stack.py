"""The registry-proxy stack: VPC, cache bucket, Fargate service and internal HTTPS load balancer.

Traffic path: CodeBuild (private subnets) -> internal ALB :443 (TLS ends here, certificate from
ACM) -> proxy tasks :5000 (plain HTTP inside the VPC) -> Docker Hub through NAT, cache in S3
through the gateway endpoint.  Every accepted cdk-nag finding is acknowledged next to the
resource it concerns, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import (
    CfnOutput,
    CfnParameter,
    Duration,
    RemovalPolicy,
    SecretValue,
    Size,
    Stack,
)
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from registry_proxy_infra.cache_gc import (
    ScheduledCacheGc,
    cache_lifecycle_rules,
    expire_unused_setting,
)
from registry_proxy_infra.config import ProxyStackConfig
from registry_proxy_infra.monitoring import Monitoring, Watched

CONTAINER_NAME = "proxy"
CONTAINER_PORT = 5000
HTTPS_PORT = 443
# Liveness plus a writable spool: what this task needs to serve, not what all tasks share (S3,
# the upstream): a shared failure would mark every target unhealthy at once.
HEALTH_CHECK_PATH = "/healthz/local"
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


class RegistryProxyStack(Stack):
    """One deployment of the proxy; all settings come from ``ProxyStackConfig``."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: ProxyStackConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

        self.certificate_arn = self._certificate_parameter()
        self.log_bucket = self._log_bucket()
        self.vpc = self._vpc()
        self.cache_bucket = self._cache_bucket()
        self.secret = self._docker_hub_secret()
        self.log_group = logs.LogGroup(
            self,
            "ProxyLogGroup",
            retention=RETENTION[config.log_retention_days],
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.load_balancer_security_group = self._load_balancer_security_group()
        self.service_security_group = ec2.SecurityGroup(
            self,
            "ServiceSecurityGroup",
            vpc=self.vpc,
            description="registry-proxy tasks: port 5000 from the load balancer; HTTPS out",
            allow_all_outbound=False,
        )
        self.service_security_group.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(HTTPS_PORT),
            "HTTPS to the upstream registry (via NAT) and to AWS APIs and S3",
        )

        self.task_role = self._task_role()
        self.task_definition = self._task_definition()
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.vpc,
            container_insights_v2=(
                ecs.ContainerInsights.ENABLED
                if config.container_insights
                else ecs.ContainerInsights.DISABLED
            ),
        )
        if not config.container_insights:
            NagSuppressions.add_resource_suppressions(
                self.cluster,
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
        # No desired count: a deployment would reset a scaled-out service to it. A new service
        # starts with one task and autoscaling raises it to minTasks at once.
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            assign_public_ip=False,
            security_groups=[self.service_security_group],
            vpc_subnets=private,
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
        scaling = self.service.auto_scale_task_count(
            min_capacity=config.min_tasks, max_capacity=config.max_tasks
        )
        scaling.scale_on_cpu_utilization(
            "CpuScaling",
            target_utilization_percent=config.cpu_target_percent,
            scale_in_cooldown=Duration.minutes(5),
            scale_out_cooldown=Duration.minutes(1),
        )

        self.cache_gc = ScheduledCacheGc(
            self,
            "CacheGc",
            cluster=self.cluster,
            task_definition=self.task_definition,
            container_name=CONTAINER_NAME,
            security_group=self.service_security_group,
            subnets=private,
        )

        self.load_balancer, self.target_group = self._load_balancer(private)
        self.mirror_host = config.domain_name or self.load_balancer.load_balancer_dns_name
        self._dns_record()
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            Watched(
                config=config,
                namespace=self.metrics_namespace,
                cluster=self.cluster,
                service=self.service,
                load_balancer=self.load_balancer,
                target_group=self.target_group,
                log_group=self.log_group,
            ),
        )
        self._outputs()

    # ------------------------------------------------------------------ parameters

    def _certificate_parameter(self) -> str:
        """The ACM certificate for the HTTPS listener, as a parameter so synth needs no value.

        ``-c certificateArn=...`` becomes the parameter's default; otherwise give it at deploy
        time with ``cdk deploy --parameters CertificateArn=...``.
        """
        options: dict[str, Any] = {}
        if self.config.certificate_arn is not None:
            options["default"] = self.config.certificate_arn
        parameter = CfnParameter(
            self,
            "CertificateArn",
            type="String",
            description=(
                "ARN of the ACM certificate for the HTTPS listener; it must cover the name "
                "clients use for the mirror (Docker daemons require HTTPS for registry-mirrors)"
            ),
            allowed_pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$",
            constraint_description="an ACM certificate ARN",
            **options,
        )
        return parameter.value_as_string

    # ------------------------------------------------------------------ storage

    def _log_bucket(self) -> s3.Bucket:
        """Destination of S3 server access logs, ALB access logs and VPC flow logs.

        It logs nothing about itself: that would write a log record for every delivery.
        """
        return s3.Bucket(
            self,
            "AccessLogBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,  # ALB access logs accept SSE-S3 only
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-logs",
                    expiration=Duration.days(self.config.access_log_retention_days),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )

    def _cache_bucket(self) -> s3.Bucket:
        # Content expires by last use (the proxy's sweeps and ScheduledCacheGc), never by age.
        rules = cache_lifecycle_rules(self.config.cache_prefix, self.config.cache_expiration_days)
        return s3.Bucket(
            self,
            "CacheBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="s3-access/cache-bucket/",
            lifecycle_rules=rules,
        )

    def _docker_hub_secret(self) -> secretsmanager.ISecret:
        """The Docker Hub account the proxy pulls with: JSON keys ``username`` and ``token``.

        A new secret starts with both empty, which the proxy reads as anonymous pulls; put the
        account in it after the first deploy (see infra/README.md).  The values never appear
        in the task definition: ECS reads them from Secrets Manager when a task starts.
        """
        if self.config.docker_hub_secret_arn is not None:
            return secretsmanager.Secret.from_secret_complete_arn(
                self, "DockerHubSecret", self.config.docker_hub_secret_arn
            )
        secret = secretsmanager.Secret(
            self,
            "DockerHubSecret",
            description=(
                "registry-proxy upstream account: {'username': Docker Hub user, 'token': Docker "
                "Hub access token}. Empty values mean anonymous pulls."
            ),
            secret_object_value={
                "username": SecretValue.unsafe_plain_text(""),
                "token": SecretValue.unsafe_plain_text(""),
            },
            removal_policy=RemovalPolicy.RETAIN,
        )
        NagSuppressions.add_resource_suppressions(
            secret,
            [
                NagPackSuppression(
                    id="AwsSolutions-SMG4",
                    reason=(
                        "Rotating means issuing a new Docker Hub access token, which Docker Hub "
                        "does (with an expiry date of its own), not Secrets Manager; a rotation "
                        "Lambda would need a stronger Docker Hub login than the read-only token "
                        "it rotates. The operator replaces the token before it expires (see "
                        "infra/README.md)."
                    ),
                )
            ],
        )
        return secret

    # ------------------------------------------------------------------ network

    def _vpc(self) -> ec2.IVpc:
        existing = self.config.existing_vpc
        if existing is not None:
            vpc = ec2.Vpc.from_vpc_attributes(
                self,
                "Vpc",
                vpc_id=existing.vpc_id,
                availability_zones=list(existing.availability_zones),
                private_subnet_ids=list(existing.private_subnet_ids),
                private_subnet_route_table_ids=list(existing.private_subnet_route_table_ids),
                vpc_cidr_block=existing.cidr,
            )
            if existing.create_s3_endpoint:
                ec2.GatewayVpcEndpoint(
                    self,
                    "S3GatewayEndpoint",
                    vpc=vpc,
                    service=ec2.GatewayVpcEndpointAwsService.S3,
                    subnets=[ec2.SubnetSelection(subnets=vpc.private_subnets)],
                )
            return vpc
        return ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(self.config.vpc_cidr),
            max_azs=self.config.max_azs,
            nat_gateways=self.config.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                ec2.SubnetConfiguration(
                    name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
            ],
            enable_dns_hostnames=True,
            enable_dns_support=True,
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
            },
            flow_logs={
                "FlowLogs": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_s3(self.log_bucket, "vpc-flow-logs/"),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
            # Nothing is ever attached to the default security group; restricting it would add a
            # custom-resource Lambda to the stack for no gain.
            restrict_default_security_group=False,
        )

    def _load_balancer_security_group(self) -> ec2.SecurityGroup:
        group = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=self.vpc,
            description="registry-proxy load balancer: HTTPS from the allowed build networks only",
            allow_all_outbound=False,
        )
        port = ec2.Port.tcp(HTTPS_PORT)
        for cidr in self.config.allowed_cidrs:
            group.add_ingress_rule(ec2.Peer.ipv4(cidr), port, f"HTTPS from {cidr}")
        for group_id in self.config.allowed_security_group_ids:
            group.add_ingress_rule(
                ec2.Peer.security_group_id(group_id), port, f"HTTPS from {group_id}"
            )
        if not (self.config.allowed_cidrs or self.config.allowed_security_group_ids):
            # Config validation guarantees the range is known here; a literal (not the VPC's
            # CidrBlock attribute) keeps the rule checkable by cdk-nag.
            vpc_cidr = self.vpc_cidr()
            assert vpc_cidr is not None
            group.add_ingress_rule(ec2.Peer.ipv4(vpc_cidr), port, "HTTPS from inside the VPC")
        return group

    def _load_balancer(
        self, subnets: ec2.SubnetSelection
    ) -> tuple[elbv2.ApplicationLoadBalancer, elbv2.ApplicationTargetGroup]:
        load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=self.vpc,
            internet_facing=False,
            vpc_subnets=subnets,
            security_group=self.load_balancer_security_group,
            # A first pull of a large layer can sit idle while the proxy fills its cache.
            idle_timeout=Duration.seconds(self.config.idle_timeout_seconds),
            drop_invalid_header_fields=True,
            http2_enabled=True,
            desync_mitigation_mode=elbv2.DesyncMitigationMode.DEFENSIVE,
        )
        load_balancer.log_access_logs(self.log_bucket, "alb")
        # The balancer appends the address it received each request from to X-Forwarded-For;
        # the proxy believes that last entry only (PROXY_TRUSTED_HOPS=1). Stated, not assumed.
        load_balancer.set_attribute("routing.http.xff_header_processing.mode", "append")
        listener = load_balancer.add_listener(
            "Https",
            port=HTTPS_PORT,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_arn(self.certificate_arn)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,  # ingress comes only from the rules in the security group above
        )
        target_group = listener.add_targets(
            "Proxy",
            port=CONTAINER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[
                self.service.load_balancer_target(
                    container_name=CONTAINER_NAME, container_port=CONTAINER_PORT
                )
            ],
            deregistration_delay=Duration.seconds(self.config.deregistration_delay_seconds),
            load_balancing_algorithm_type=(
                elbv2.TargetGroupLoadBalancingAlgorithmType.LEAST_OUTSTANDING_REQUESTS
            ),
            health_check=elbv2.HealthCheck(
                path=HEALTH_CHECK_PATH,
                healthy_http_codes="200",
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=3,
            ),
        )
        return load_balancer, target_group

    def _dns_record(self) -> None:
        config = self.config
        if config.hosted_zone_id is None or config.hosted_zone_name is None:
            return
        zone = route53.HostedZone.from_hosted_zone_attributes(
            self,
            "HostedZone",
            hosted_zone_id=config.hosted_zone_id,
            zone_name=config.hosted_zone_name,
        )
        route53.ARecord(
            self,
            "MirrorAliasRecord",
            zone=zone,
            record_name=config.domain_name,
            target=route53.RecordTarget.from_alias(
                route53_targets.LoadBalancerTarget(self.load_balancer)
            ),
        )

    # ------------------------------------------------------------------ compute

    def _task_role(self) -> iam.Role:
        """What the proxy itself may do: read and write cache objects, list the bucket."""
        role = iam.Role(
            self,
            "TaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com").with_conditions(
                {"StringEquals": {"aws:SourceAccount": self.account}}
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
        bucket_id = self.resolve(cfn_bucket.logical_id)
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

    def _image(self) -> ecs.ContainerImage:
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
            self, "ImageRepository", config.image_repository_name
        )
        # A tag (the repository is tag-immutable) or a digest: each task runs the same build.
        reference = config.image_digest or config.image_tag
        assert reference is not None, "build_app refuses a deployment without an image"
        return ecs.ContainerImage.from_ecr_repository(repository, reference)

    @property
    def metrics_namespace(self) -> str:
        """CloudWatch namespace of the proxy's own metrics; one per stack."""
        return f"RegistryProxy/{self.stack_name}"

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
            "PROXY_CLOUDWATCH_NAMESPACE": self.metrics_namespace,
            "PROXY_CLOUDWATCH_INTERVAL": "60",
            **config.sizes.environment,
            "AWS_DEFAULT_REGION": self.region,
            **expire_unused_setting(config.cache_expiration_days),
        }
        trusted = self.load_balancer_ranges()
        if trusted:
            # Only the load balancer's security group reaches the tasks, and the proxy believes
            # exactly one X-Forwarded-For entry, the one the balancer appended: clients in the
            # same ranges cannot pass for another address.
            environment["PROXY_TRUSTED_PROXIES"] = ",".join(trusted)
            environment["PROXY_TRUSTED_HOPS"] = "1"
        environment.update(config.extra_environment)
        return environment

    def load_balancer_ranges(self) -> list[str]:
        """Where the load balancer's addresses come from, as literals known at synth time: its
        subnets' ranges in a VPC the stack creates, the VPC's range for an existing one."""
        if self.config.existing_vpc is None:
            return [subnet.ipv4_cidr_block for subnet in self.vpc.private_subnets]
        vpc_cidr = self.vpc_cidr()
        return [vpc_cidr] if vpc_cidr is not None else []

    def vpc_cidr(self) -> str | None:
        """The VPC's range as a literal (not a token), when it is known at synth time."""
        if self.config.existing_vpc is not None:
            return self.config.existing_vpc.cidr
        return self.config.vpc_cidr

    def _task_definition(self) -> ecs.FargateTaskDefinition:
        config = self.config
        task_definition = ecs.FargateTaskDefinition(
            self,
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
            image=self._image(),
            essential=True,
            # ECS Exec's agent writes into the container, which a read-only root forbids.
            readonly_root_filesystem=not config.ecs_exec,
            port_mappings=[
                ecs.PortMapping(
                    container_port=CONTAINER_PORT, protocol=ecs.Protocol.TCP, name="http"
                )
            ],
            environment=self.proxy_environment(),
            secrets={
                "PROXY_UPSTREAM_USERNAME": ecs.Secret.from_secrets_manager(self.secret, "username"),
                "PROXY_UPSTREAM_PASSWORD": ecs.Secret.from_secrets_manager(self.secret, "token"),
            },
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
        container.add_mount_points(
            ecs.MountPoint(container_path=SPOOL_PATH, source_volume="spool", read_only=False)
        )
        if task_definition.execution_role is not None and self.config.image_uri is None:
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

    # ------------------------------------------------------------------ outputs

    def _outputs(self) -> None:
        CfnOutput(
            self,
            "MirrorUrl",
            value=f"https://{self.mirror_host}",
            description="registry-mirrors entry for the Docker daemon (see docs/codebuild.md)",
        )
        CfnOutput(
            self,
            "LoadBalancerDnsName",
            value=self.load_balancer.load_balancer_dns_name,
            description="point domainName's DNS record here when no hostedZoneId is given",
        )
        CfnOutput(
            self,
            "LoadBalancerSecurityGroupId",
            value=self.load_balancer_security_group.security_group_id,
        )
        CfnOutput(self, "CacheBucketName", value=self.cache_bucket.bucket_name)
        CfnOutput(
            self,
            "DockerHubSecretArn",
            value=self.secret.secret_arn,
            description="put {'username': ..., 'token': ...} here, then redeploy the service",
        )
        CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        CfnOutput(self, "ServiceName", value=self.service.service_name)
        CfnOutput(self, "LogGroupName", value=self.log_group.log_group_name)
