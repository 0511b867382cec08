"""Mutual TLS for the internet-facing load balancer: a trust store of the builds' CA.

The CA bundle (and the revocation list, when given) are files of the deployment, uploaded as CDK
file assets to the bootstrap bucket, from which the load balancer reads them when the trust
store is created or changed; synthesis only copies them, offline.  The stack never sees a CA's
private key: the bundle holds certificates only (``config.read_pem`` refuses a key), and client
certificates are issued on the CA owner's machine (docs/codebuild.md).

A revocation list that revokes nothing (what ``registry-proxy certs init-ca`` publishes) makes
no ``TrustStoreRevocation``: it would change nothing the load balancer does, and whether the
load balancer accepts a list with no entries is unknown (nobody has deployed one).  The list is
read at synthesis (``config.revoked_serials``, which also checks that the bundle's CA signed it);
the first revoked certificate adds the resource, with the file as it is.
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from registry_proxy_infra.config import ProxyStackConfig, infra_path
from registry_proxy_infra.load_balancer import Entrance
from registry_proxy_infra.network import Network


class ClientTrust:
    """The trust store (CA bundle) and its revocation list, built into ``scope``."""

    def __init__(self, scope: Construct, *, config: ProxyStackConfig) -> None:
        assert config.client_ca_bundle_file is not None, "the settings require it"
        self.bundle = s3_assets.Asset(
            scope, "ClientCaBundle", path=str(infra_path(config.client_ca_bundle_file))
        )
        self.trust_store = elbv2.TrustStore(
            scope,
            "TrustStore",
            bucket=self.bundle.bucket,
            key=self.bundle.s3_object_key,
        )
        self.revocation: elbv2.TrustStoreRevocation | None = None
        if config.client_revocation_list_file is not None and config.revoked_client_serials:
            crl = s3_assets.Asset(
                scope,
                "ClientRevocationList",
                path=str(infra_path(config.client_revocation_list_file)),
            )
            self.revocation = elbv2.TrustStoreRevocation(
                scope,
                "TrustStoreRevocation",
                trust_store=self.trust_store,
                revocation_contents=[
                    elbv2.RevocationContent(
                        bucket=crl.bucket,
                        key=crl.s3_object_key,
                        revocation_type=elbv2.RevocationType.CRL,
                    )
                ],
            )


def internet_entrance(config: ProxyStackConfig, network: Network, trust: ClientTrust) -> Entrance:
    """The internet-facing load balancer: the public subnets, any address (or the allowed
    ranges), each connection with a client certificate of the trust store's CA."""
    ingress: tuple[tuple[ec2.IPeer, str], ...] = tuple(
        (ec2.Peer.ipv4(cidr), f"HTTPS from {cidr} (client certificate required)")
        for cidr in config.internet_allowed_cidrs
    ) or ((ec2.Peer.any_ipv4(), "HTTPS from anywhere (client certificate required)"),)
    certificate = config.internet_certificate_arn or config.certificate_arn
    assert certificate is not None and config.internet_domain_name is not None
    return Entrance(
        internet_facing=True,
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
        ingress=ingress,
        certificate_arn=certificate,
        domain_name=config.internet_domain_name,
        security_group_description=(
            "registry-proxy internet-facing load balancer: HTTPS, mutual TLS (client "
            "certificates of the builds CA)"
        ),
        access_log_prefix="alb-internet",
        trust_store=trust.trust_store,
    )
