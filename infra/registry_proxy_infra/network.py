"""The network: the VPC the stack creates (or an existing one, by ids) and its S3 gateway endpoint.

Synthesis stays offline, so an existing VPC is described by ids and its range is given, never
looked up. The ranges the load balancer's addresses come from are known here, as literals, for
the load balancer's default ingress and for the proxy's ``PROXY_TRUSTED_PROXIES``.
"""

from __future__ import annotations

from aws_cdk import Annotations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from registry_proxy_infra.config import ProxyStackConfig


class Network:
    """The VPC, built into ``scope`` under the construct ids it has always had (see stack.py)."""

    def __init__(
        self, scope: Construct, *, config: ProxyStackConfig, log_bucket: s3.IBucket
    ) -> None:
        self.config = config
        existing = config.existing_vpc
        if existing is None:
            self.vpc: ec2.IVpc = self._new_vpc(scope, log_bucket)
            return
        self.vpc = ec2.Vpc.from_vpc_attributes(
            scope,
            "Vpc",
            vpc_id=existing.vpc_id,
            availability_zones=list(existing.availability_zones),
            private_subnet_ids=list(existing.private_subnet_ids),
            private_subnet_route_table_ids=list(existing.private_subnet_route_table_ids),
            # only the internet-facing load balancer lives there
            public_subnet_ids=list(config.vpc_public_subnet_ids) or None,
            vpc_cidr_block=existing.cidr,
        )
        if config.vpc_public_subnet_ids:
            # The internet-facing load balancer needs the public subnets' ids only; CDK warns
            # that their route tables (given for the private ones) are unknown.
            Annotations.of(self.vpc).acknowledge_warning(
                "@aws-cdk/aws-ec2:noSubnetRouteTableId",
                "public subnets hold only the internet-facing load balancer; no route is added",
            )
        if existing.create_s3_endpoint:
            ec2.GatewayVpcEndpoint(
                scope,
                "S3GatewayEndpoint",
                vpc=self.vpc,
                service=ec2.GatewayVpcEndpointAwsService.S3,
                subnets=[ec2.SubnetSelection(subnets=self.vpc.private_subnets)],
            )

    def _new_vpc(self, scope: Construct, log_bucket: s3.IBucket) -> ec2.Vpc:
        return ec2.Vpc(
            scope,
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
                    destination=ec2.FlowLogDestination.to_s3(log_bucket, "vpc-flow-logs/"),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
            # Nothing is ever attached to the default security group; restricting it would add a
            # custom-resource Lambda to the stack for no gain.
            restrict_default_security_group=False,
        )

    @property
    def private_subnets(self) -> ec2.SubnetSelection:
        """Where the tasks, the scheduled cache gc and the internal load balancer live."""
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    @property
    def vpc_cidr(self) -> str:
        """The VPC's range as a literal (not a token): the settings require it with ``vpcId``."""
        existing = self.config.existing_vpc
        if existing is None:
            return self.config.vpc_cidr
        assert existing.cidr is not None, "the settings refuse vpcId without existingVpcCidr"
        return existing.cidr

    def load_balancer_ranges(self) -> list[str]:
        """Where the load balancers' addresses come from, as literals known at synth time: their
        subnets' ranges in a VPC the stack creates (the public ones too with the internet-facing
        load balancer), the VPC's range for an existing one."""
        if self.config.existing_vpc is not None:
            return [self.vpc_cidr]
        subnets = list(self.vpc.private_subnets)
        if self.config.internet_facing:
            subnets += self.vpc.public_subnets
        return [subnet.ipv4_cidr_block for subnet in subnets]
