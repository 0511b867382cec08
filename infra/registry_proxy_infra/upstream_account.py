"""The Docker Hub account the proxy pulls with: a secret the operator made, read by ECS.

The stack makes no secret of its own: one it made would start empty, and the proxy would pull
anonymously, sharing the NAT gateways' anonymous rate limit, until someone filled it in.  The
deployment names the secret (``dockerHubSecretArn``), or says ``anonymousPulls`` on purpose.
The values never appear in the task definition: ECS reads them when a task starts.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from registry_proxy_infra.config import ProxyStackConfig


class UpstreamAccount:
    """The secret with JSON keys ``username`` and ``token``, or none for anonymous pulls."""

    def __init__(self, scope: Construct, *, config: ProxyStackConfig) -> None:
        self.config = config
        self.region = Stack.of(scope).region
        self.secret: secretsmanager.ISecret | None = None
        if config.docker_hub_secret_arn is not None:
            self.secret = secretsmanager.Secret.from_secret_complete_arn(
                scope, "DockerHubSecret", config.docker_hub_secret_arn
            )

    def grant_read(self, role: iam.IRole) -> None:
        """What ECS needs to hand the secret to a task, besides ``secretsmanager:GetSecretValue``
        (which the container's secrets grant): with a customer-managed key, ``kms:Decrypt``
        with it, through Secrets Manager only.  The key's own policy must let the account's IAM
        policies grant it (a key's default policy does)."""
        key_arn = self.config.docker_hub_secret_kms_key_arn
        if key_arn is None:
            return
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="DockerHubSecretKey",
                actions=["kms:Decrypt"],
                resources=[key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"secretsmanager.{self.region}.amazonaws.com"
                    }
                },
            )
        )
