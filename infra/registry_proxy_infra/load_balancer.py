"""The load balancers in front of the tasks: HTTPS only, TLS ends there with an ACM certificate.

The internal one serves builds inside the VPC; its security group admits 443 from the allowed
build networks only.  The internet-facing one (``internetFacing``) serves builds outside any VPC:
it sits in the public subnets and requires a client certificate that chains to the trust store's
CA (mutual TLS in verify mode), so an address allow-list (``internetAllowedCidrs``) is defence in
depth, not the gate.  The tasks' security group admits the load balancers alone.  An alias
record for each name is made when a hosted zone is given.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Entrance:
    """What differs between the two load balancers."""

    internet_facing: bool
    subnets: ec2.SubnetSelection
    # (source, rule description) for each rule admitting HTTPS
    ingress: tuple[tuple[ec2.IPeer, str], ...]
    certificate_arn: str
    domain_name: str
    security_group_description: str
    access_log_prefix: str
    trust_store: elbv2.ITrustStore | None = None


def internal_entrance(config: ProxyStackConfig, network: Network) -> Entrance:
    """The internal load balancer: the private subnets, the allowed build networks."""
    ingress: list[tuple[ec2.IPeer, str]] = [
        (ec2.Peer.ipv4(cidr), f"HTTPS from {cidr}") for cidr in config.allowed_cidrs
    ]
    ingress += [
        (ec2.Peer.security_group_id(group_id), f"HTTPS from {group_id}")
        for group_id in config.allowed_security_group_ids
    ]
    if not ingress:
        # A literal (not the VPC's CidrBlock attribute) keeps the rule checkable by cdk-nag.
        ingress.append((ec2.Peer.ipv4(network.vpc_cidr), "HTTPS from inside the VPC"))
    assert config.certificate_arn is not None and config.domain_name is not None
    return Entrance(
        internet_facing=False,
        subnets=network.private_subnets,
        ingress=tuple(ingress),
        certificate_arn=config.certificate_arn,
        domain_name=config.domain_name,
        security_group_description=(
            "registry-proxy load balancer: HTTPS from the allowed build networks only"
        ),
        access_log_prefix="alb",
    )


class ProxyLoadBalancer:
    """A load balancer, its security group, HTTPS listener and target group, built into
    ``scope``: the stack itself for the internal one (the construct ids it has always had), a
    construct of its own for the internet-facing one (see stack.py)."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: ProxyStackConfig,
        network: Network,
        entrance: Entrance,
        log_bucket: s3.IBucket,
        service: ecs.FargateService,
    ) -> None:
        self.config = config
        self.scope = scope
        self.entrance = entrance
        self.security_group = ec2.SecurityGroup(
            scope,
            "LoadBalancerSecurityGroup",
            vpc=network.vpc,
            description=entrance.security_group_description,
            allow_all_outbound=False,
        )
        for peer, description in entrance.ingress:
            self.security_group.add_ingress_rule(peer, ec2.Port.tcp(HTTPS_PORT), description)
        self.load_balancer = elbv2.ApplicationLoadBalancer(
            scope,
            "LoadBalancer",
            vpc=network.vpc,
            internet_facing=entrance.internet_facing,
            vpc_subnets=entrance.subnets,
            security_group=self.security_group,
            # A first pull of a large layer can sit idle while the proxy fills its cache.
            idle_timeout=Duration.seconds(config.idle_timeout_seconds),
            drop_invalid_header_fields=True,
            http2_enabled=True,
            desync_mitigation_mode=elbv2.DesyncMitigationMode.DEFENSIVE,
        )
        self.load_balancer.log_access_logs(log_bucket, entrance.access_log_prefix)
        # The balancer appends the address it received each request from to X-Forwarded-For;
        # the proxy believes that last entry only (PROXY_TRUSTED_HOPS=1). Stated, not assumed.
        self.load_balancer.set_attribute("routing.http.xff_header_processing.mode", "append")
        mutual_tls = None
        if entrance.trust_store is not None:
            # Verify mode: a TLS handshake without a client certificate that chains to the trust
            # store's CA (and is not revoked, nor expired) ends before any HTTP request.
            mutual_tls = elbv2.MutualAuthentication(
                mutual_authentication_mode=elbv2.MutualAuthenticationMode.VERIFY,
                trust_store=entrance.trust_store,
                ignore_client_certificate_expiry=False,
            )
        self.listener = self.load_balancer.add_listener(
            "Https",
            port=HTTPS_PORT,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_arn(entrance.certificate_arn)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,  # ingress comes only from the rules in the security group above
            mutual_authentication=mutual_tls,
        )
        self.target_group = self.listener.add_targets(
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

    @property
    def dns_name(self) -> str:
        return self.load_balancer.load_balancer_dns_name

    def alias_record(self, scope: Construct, zone: route53.IHostedZone) -> None:
        """The balancer's name in ``zone`` (with ``hostedZoneId``)."""
        route53.ARecord(
            scope,
            "MirrorAliasRecord",
            zone=zone,
            record_name=self.entrance.domain_name,
            target=route53.RecordTarget.from_alias(
                route53_targets.LoadBalancerTarget(self.load_balancer)
            ),
        )
