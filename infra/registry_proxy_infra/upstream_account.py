"""The Docker Hub account the proxy pulls with: a Secrets Manager secret, read by ECS."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, SecretValue
from aws_cdk import aws_secretsmanager as secretsmanager
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from registry_proxy_infra.config import ProxyStackConfig


class UpstreamAccount:
    """The secret with JSON keys ``username`` and ``token``, built into ``scope``.

    A new secret starts with both empty, which the proxy reads as anonymous pulls; put the
    account in it after the first deploy (see infra/README.md).  The values never appear in the
    task definition: ECS reads them from Secrets Manager when a task starts.
    """

    def __init__(self, scope: Construct, *, config: ProxyStackConfig) -> None:
        self.config = config
        if config.docker_hub_secret_arn is not None:
            self.secret: secretsmanager.ISecret = secretsmanager.Secret.from_secret_complete_arn(
                scope, "DockerHubSecret", config.docker_hub_secret_arn
            )
            return
        secret = secretsmanager.Secret(
            scope,
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
        self.secret = secret
