"""The registry-proxy stack: the parts below, composed.

Traffic path: CodeBuild (private subnets) -> internal ALB :443 (TLS ends here, certificate from
ACM) -> proxy tasks :5000 (plain HTTP inside the VPC) -> Docker Hub through NAT, cache in S3
through the gateway endpoint.  With ``internetFacing``, CodeBuild outside any VPC -> an
internet-facing ALB :443 in the public subnets (mutual TLS: a client certificate of the builds'
CA) -> the same tasks.  Every accepted cdk-nag finding is acknowledged next to the
resource it concerns, with the reason.

Each part (``AccessLogs``, ``Network``, ``CacheStorage``, ``UpstreamAccount``, ``ProxyService``,
``ProxyLoadBalancer``) is a class that builds one concern into the scope it is given, rather
than a construct of its own: a construct adds its id to the construct path of everything inside
it, and a deployed stack's logical ids, its VPC's and subnets' Name tags and the ids of security
group rules between groups are all derived from that path.  Moving the existing resources under
new constructs would replace them on the next deploy (and a security group rule replaced by an
identical one fails to create).  ``Monitoring`` and ``ScheduledCacheGc`` were constructs from
the start and stay so; new parts may be given a construct of their own as their scope.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_route53 as route53
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from registry_proxy_infra.cache_gc import ScheduledCacheGc
from registry_proxy_infra.config import ProxyStackConfig
from registry_proxy_infra.load_balancer import ProxyLoadBalancer, internal_entrance
from registry_proxy_infra.monitoring import Monitoring, Watched
from registry_proxy_infra.mutual_tls import ClientTrust, internet_entrance
from registry_proxy_infra.network import Network
from registry_proxy_infra.service import CONTAINER_NAME, ProxyService, metrics_namespace
from registry_proxy_infra.storage import AccessLogs, CacheStorage
from registry_proxy_infra.upstream_account import UpstreamAccount


class RegistryProxyStack(Stack):
    """One deployment of the proxy; all settings come from ``ProxyStackConfig``."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: ProxyStackConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.access_logs = AccessLogs(self, config=config)
        self.network = Network(self, config=config, log_bucket=self.access_logs.bucket)
        self.storage = CacheStorage(self, config=config, log_bucket=self.access_logs.bucket)
        self.upstream_account = UpstreamAccount(self, config=config)
        self.proxy = ProxyService(
            self,
            config=config,
            network=self.network,
            cache_bucket=self.storage.bucket,
            account=self.upstream_account,
        )
        self.cache_gc = ScheduledCacheGc(
            self,
            "CacheGc",
            cluster=self.proxy.cluster,
            task_definition=self.proxy.task_definition,
            container_name=CONTAINER_NAME,
            security_group=self.proxy.security_group,
            subnets=self.network.private_subnets,
        )
        self.load_balancer = ProxyLoadBalancer(
            self,
            config=config,
            network=self.network,
            entrance=internal_entrance(config, self.network),
            log_bucket=self.access_logs.bucket,
            service=self.proxy.service,
        )
        self.internet: ProxyLoadBalancer | None = None
        if config.internet_facing:
            self.internet = self._internet_facing()
        self._dns_records()
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            Watched(
                config=config,
                namespace=metrics_namespace(self.stack_name),
                cluster=self.proxy.cluster,
                service=self.proxy.service,
                load_balancer=self.load_balancer.load_balancer,
                target_group=self.load_balancer.target_group,
                log_group=self.proxy.log_group,
            ),
        )
        self._outputs()

    def _internet_facing(self) -> ProxyLoadBalancer:
        """The internet-facing load balancer with mutual TLS, in a construct of its own."""
        scope = Construct(self, "InternetFacing")
        self.client_trust = ClientTrust(scope, config=self.config)
        balancer = ProxyLoadBalancer(
            scope,
            config=self.config,
            network=self.network,
            entrance=internet_entrance(self.config, self.network, self.client_trust),
            log_bucket=self.access_logs.bucket,
            service=self.proxy.service,
        )
        if not self.config.internet_allowed_cidrs:
            NagSuppressions.add_resource_suppressions(
                balancer.security_group,
                [
                    NagPackSuppression(
                        id="AwsSolutions-EC23",
                        reason=(
                            "The internet-facing load balancer serves builds outside any VPC, "
                            "from addresses shared with every CodeBuild user of the region; "
                            "what admits a build is the client certificate its listener "
                            "verifies (mutual TLS, verify mode), and internetAllowedCidrs "
                            "narrows the sources when set."
                        ),
                    )
                ],
            )
        return balancer

    def _dns_records(self) -> None:
        """Alias records for the load balancers' names, when a hosted zone is given."""
        config = self.config
        if config.hosted_zone_id is None or config.hosted_zone_name is None:
            return
        zone = route53.HostedZone.from_hosted_zone_attributes(
            self,
            "HostedZone",
            hosted_zone_id=config.hosted_zone_id,
            zone_name=config.hosted_zone_name,
        )
        self.load_balancer.alias_record(self, zone)
        name = config.internet_domain_name
        if self.internet is not None and name is not None and in_zone(name, zone.zone_name):
            self.internet.alias_record(self.internet.scope, zone)

    def _outputs(self) -> None:
        CfnOutput(
            self,
            "MirrorUrl",
            value=f"https://{self.config.domain_name}",
            description="registry-mirrors entry for the Docker daemon (see docs/codebuild.md)",
        )
        CfnOutput(
            self,
            "LoadBalancerDnsName",
            value=self.load_balancer.dns_name,
            description="point domainName's DNS record here when no hostedZoneId is given",
        )
        CfnOutput(
            self,
            "LoadBalancerSecurityGroupId",
            value=self.load_balancer.security_group.security_group_id,
        )
        if self.internet is not None:
            CfnOutput(
                self,
                "InternetMirrorUrl",
                value=f"https://{self.config.internet_domain_name}",
                description=(
                    "registry-mirrors entry for builds outside any VPC; each needs a client "
                    "certificate of the clientCaBundleFile CA (see docs/codebuild.md)"
                ),
            )
            CfnOutput(
                self,
                "InternetLoadBalancerDnsName",
                value=self.internet.dns_name,
                description="point internetDomainName's DNS record here when it is not in the zone",
            )
        CfnOutput(self, "CacheBucketName", value=self.storage.bucket.bucket_name)
        CfnOutput(self, "ClusterName", value=self.proxy.cluster.cluster_name)
        CfnOutput(self, "ServiceName", value=self.proxy.service.service_name)
        CfnOutput(self, "LogGroupName", value=self.proxy.log_group.log_group_name)


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)
