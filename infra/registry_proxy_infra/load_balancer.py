"""The load balancer in front of the tasks: HTTPS only, TLS ends here with an ACM certificate.

Its security group admits 443 from the allowed build networks only; the tasks' group admits the
load balancer alone.  An alias record for ``domainName`` is made when a hosted zone is given.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_s3 as s3
from constructs import Construct

from registry_proxy_infra.config import ProxyStackConfig
from registry_proxy_infra.network import Network
from registry_proxy_infra.service import CONTAINER_NAME, CONTAINER_PORT, HTTPS_PORT

# Liveness plus a writable spool: what this task needs to serve, not what all tasks share (S3,
# the upstream): a shared failure would mark every target unhealthy at once.
HEALTH_CHECK_PATH = "/healthz/local"


class ProxyLoadBalancer:
    """The internal load balancer, its security group, HTTPS listener and target group, built
    into ``scope`` under the construct ids they have always had (see stack.py)."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: ProxyStackConfig,
        network: Network,
        log_bucket: s3.IBucket,
        certificate_arn: str | None,
        service: ecs.FargateService,
    ) -> None:
        assert certificate_arn is not None, "build_app refuses a deployment without one"
        self.config = config
        self.network = network
        self.security_group = self._security_group(scope)
        self.load_balancer = elbv2.ApplicationLoadBalancer(
            scope,
            "LoadBalancer",
            vpc=network.vpc,
            internet_facing=False,
            vpc_subnets=network.private_subnets,
            security_group=self.security_group,
            # A first pull of a large layer can sit idle while the proxy fills its cache.
            idle_timeout=Duration.seconds(config.idle_timeout_seconds),
            drop_invalid_header_fields=True,
            http2_enabled=True,
            desync_mitigation_mode=elbv2.DesyncMitigationMode.DEFENSIVE,
        )
        self.load_balancer.log_access_logs(log_bucket, "alb")
        # The balancer appends the address it received each request from to X-Forwarded-For;
        # the proxy believes that last entry only (PROXY_TRUSTED_HOPS=1). Stated, not assumed.
        self.load_balancer.set_attribute("routing.http.xff_header_processing.mode", "append")
        listener = self.load_balancer.add_listener(
            "Https",
            port=HTTPS_PORT,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_arn(certificate_arn)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,  # ingress comes only from the rules in the security group above
        )
        self.target_group = listener.add_targets(
            "Proxy",
            port=CONTAINER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[
                service.load_balancer_target(
                    container_name=CONTAINER_NAME, container_port=CONTAINER_PORT
                )
            ],
            deregistration_delay=Duration.seconds(config.deregistration_delay_seconds),
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
        self._dns_record(scope)

    @property
    def dns_name(self) -> str:
        return self.load_balancer.load_balancer_dns_name

    def _security_group(self, scope: Construct) -> ec2.SecurityGroup:
        config = self.config
        group = ec2.SecurityGroup(
            scope,
            "LoadBalancerSecurityGroup",
            vpc=self.network.vpc,
            description="registry-proxy load balancer: HTTPS from the allowed build networks only",
            allow_all_outbound=False,
        )
        port = ec2.Port.tcp(HTTPS_PORT)
        for cidr in config.allowed_cidrs:
            group.add_ingress_rule(ec2.Peer.ipv4(cidr), port, f"HTTPS from {cidr}")
        for group_id in config.allowed_security_group_ids:
            group.add_ingress_rule(
                ec2.Peer.security_group_id(group_id), port, f"HTTPS from {group_id}"
            )
        if not (config.allowed_cidrs or config.allowed_security_group_ids):
            # A literal (not the VPC's CidrBlock attribute) keeps the rule checkable by cdk-nag.
            group.add_ingress_rule(
                ec2.Peer.ipv4(self.network.vpc_cidr), port, "HTTPS from inside the VPC"
            )
        return group

    def _dns_record(self, scope: Construct) -> None:
        config = self.config
        if config.hosted_zone_id is None or config.hosted_zone_name is None:
            return
        zone = route53.HostedZone.from_hosted_zone_attributes(
            scope,
            "HostedZone",
            hosted_zone_id=config.hosted_zone_id,
            zone_name=config.hosted_zone_name,
        )
        route53.ARecord(
            scope,
            "MirrorAliasRecord",
            zone=zone,
            record_name=config.domain_name,
            target=route53.RecordTarget.from_alias(
                route53_targets.LoadBalancerTarget(self.load_balancer)
            ),
        )
