"""The scenarios the infra tests synthesize, and helpers to inspect what came out.

Synthesis runs offline: the stack leaves the account open and reads an existing VPC from ids,
so nothing here needs AWS credentials, a network or a Docker daemon.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template
from registry_proxy_infra.application import build_app
from registry_proxy_infra.stack import RegistryProxyStack

REGION = "eu-west-1"
ACCOUNT = "123456789012"
CERTIFICATE_ARN = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/5d0c2a9e-8f1b-4c3d-9e6f-1a2b3c4d5e6f"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:registry-proxy/docker-hub-AbC123"

KMS_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
DOMAIN_NAME = "registry.build.example.com"

# What a user gets from cdk.json with nothing but the settings every deployment must state: the
# region, the image to run, the mirror's name and certificate, the Docker Hub account.
IMAGE_TAG = "3f2a9c1"
REQUIRED_CONTEXT: dict[str, Any] = {
    "region": REGION,
    "imageTag": IMAGE_TAG,
    "domainName": DOMAIN_NAME,
    "certificateArn": CERTIFICATE_ARN,
    "dockerHubSecretArn": SECRET_ARN,
}
DEFAULT_CONTEXT: dict[str, Any] = dict(REQUIRED_CONTEXT)

# Every optional feature at once: an existing VPC described by ids, explicit client networks,
# a DNS record in a hosted zone, cache expiry, a secret under a customer-managed key, an image
# given by URI, alarm subscribers, an operator network, ECS Exec on and Container Insights off.
CUSTOM_CONTEXT: dict[str, Any] = {
    "region": REGION,
    "stackName": "RegistryProxyCustom",
    "vpcId": "vpc-0a1b2c3d4e5f60718",
    "existingVpcCidr": "10.40.0.0/16",
    "createS3GatewayEndpoint": "true",
    # as `-c key=a,b` passes lists: comma-separated strings
    "vpcAvailabilityZones": "eu-west-1a,eu-west-1b,eu-west-1c",
    "vpcPrivateSubnetIds": (
        "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2,subnet-0ccccccccccccccc3"
    ),
    "vpcPrivateSubnetRouteTableIds": (
        "rtb-0aaaaaaaaaaaaaaa1,rtb-0bbbbbbbbbbbbbbb2,rtb-0ccccccccccccccc3"
    ),
    "allowedCidrs": ["10.50.0.0/16", "10.51.0.0/16"],
    "allowedSecurityGroupIds": ["sg-0123456789abcdef0"],
    "certificateArn": CERTIFICATE_ARN,
    "domainName": DOMAIN_NAME,
    "hostedZoneId": "Z0123456789ABCDEFGHIJ",
    "hostedZoneName": "build.example.com",
    "imageUri": "public.ecr.aws/example/registry-proxy:1.2.3",
    "dockerHubSecretArn": SECRET_ARN,
    "dockerHubSecretKmsKeyArn": KMS_KEY_ARN,
    "cacheExpirationDays": "30",
    "blobRedirect": "true",
    "logRetentionDays": 90,
    "minTasks": 3,
    "maxTasks": 10,
    "cpuTargetPercent": 50,
    "extraEnvironment": {"PROXY_UPSTREAM_READ_TIMEOUT": "120"},
    "alarmEmails": "ops@example.com,builds@example.com",
    "alarmHttpsEndpoints": ["https://events.example.com/sns"],
    "operatorCidrs": "10.60.0.0/24",
    "ecsExec": "true",
    "containerInsights": "false",
    "memoryMiB": 4096,
    "ephemeralStorageGiB": 100,
    "spoolPerFetchMiB": 2048,
}


# Builds outside any VPC too: the internet-facing load balancer with mutual TLS, beside the
# internal one. The CA bundle and revocation list are fixtures made once with openssl (an EC
# P-256 CA, "registry-proxy test builds CA", and an empty CRL it signed, which therefore makes
# no trust store revocation); the CA's key was thrown away, as the stack never needs it.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CLIENT_CA_BUNDLE = "../tests/infra/fixtures/client-ca.pem"  # relative to infra/, as documented
CLIENT_CRL = "../tests/infra/fixtures/client-ca.crl.pem"
INTERNET_DOMAIN_NAME = "registry-ext.build.example.com"
INTERNET_CONTEXT: dict[str, Any] = {
    **REQUIRED_CONTEXT,
    "internetFacing": True,
    "internetDomainName": INTERNET_DOMAIN_NAME,
    "clientCaBundleFile": CLIENT_CA_BUNDLE,
    "clientRevocationListFile": CLIENT_CRL,
    "hostedZoneId": "Z0123456789ABCDEFGHIJ",
    "hostedZoneName": "build.example.com",
}
# The same in an existing VPC, with the sources narrowed to CodeBuild's ranges (examples).
INTERNET_EXISTING_VPC_CONTEXT: dict[str, Any] = {
    **{key: value for key, value in INTERNET_CONTEXT.items() if key != "clientRevocationListFile"},
    "stackName": "RegistryProxyInternet",
    "vpcId": CUSTOM_CONTEXT["vpcId"],
    "existingVpcCidr": CUSTOM_CONTEXT["existingVpcCidr"],
    "createS3GatewayEndpoint": False,
    "vpcAvailabilityZones": CUSTOM_CONTEXT["vpcAvailabilityZones"],
    "vpcPrivateSubnetIds": CUSTOM_CONTEXT["vpcPrivateSubnetIds"],
    "vpcPrivateSubnetRouteTableIds": CUSTOM_CONTEXT["vpcPrivateSubnetRouteTableIds"],
    "vpcPublicSubnetIds": (
        "subnet-0ddddddddddddddd4,subnet-0eeeeeeeeeeeeeee5,subnet-0fffffffffffffff6"
    ),
    "internetAllowedCidrs": ["13.112.191.184/29", "15.152.81.48/28"],
    "internetCertificateArn": CERTIFICATE_ARN.replace("5d0c2a9e", "6e1d3b0f"),
}


@dataclass(frozen=True)
class Synthesized:
    """One synthesized scenario: the stack, its template and what cdk-nag reported."""

    name: str
    stack: RegistryProxyStack
    template: Template
    outdir: Path

    @property
    def json(self) -> dict[str, Any]:
        return dict(self.template.to_json())

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        found = self.template.find_resources(resource_type)
        return {logical_id: dict(resource) for logical_id, resource in found.items()}

    def only(self, resource_type: str) -> dict[str, Any]:
        """The properties of the single resource of ``resource_type``."""
        found = self.resources(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
        properties: dict[str, Any] = next(iter(found.values())).get("Properties", {})
        return properties

    def logical_id(self, resource_type: str) -> str:
        found = self.resources(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
        return next(iter(found))

    def nag_rows(self) -> list[dict[str, str]]:
        reports = sorted(self.outdir.glob("AwsSolutions-*NagReport.csv"))
        assert reports, f"cdk-nag wrote no report into {self.outdir}"
        rows: list[dict[str, str]] = []
        for report in reports:
            with report.open(newline="", encoding="utf-8") as handle:
                rows.extend(csv.DictReader(handle))
        return rows

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.outdir / "manifest.json").read_text())
        return data


def synthesize(name: str, context: Mapping[str, Any], outdir: Path) -> Synthesized:
    app, stack = build_app(context, outdir=str(outdir))
    try:
        app.synth()
    except RuntimeError as exc:
        # cdk-nag errors fail synthesis; show the findings rather than only "Validation failed".
        findings = [
            f"{row['Rule ID']} on {row['Resource ID']}: {row['Rule Info']}"
            for path in outdir.glob("AwsSolutions-*NagReport.csv")
            for row in csv.DictReader(path.open(newline="", encoding="utf-8"))
            if row["Compliance"] not in ("Compliant", "Suppressed", "N/A")
        ]
        pytest.fail(
            f"synthesis of the {name} scenario failed: {exc}\n" + "\n".join(findings),
            pytrace=False,
        )
    return Synthesized(name, stack, Template.from_stack(stack), outdir)
