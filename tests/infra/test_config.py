"""Reading and validating the deployment settings (no synthesis: these run in milliseconds)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from registry_proxy_infra.application import build_app, cdk_json_context
from registry_proxy_infra.config import (
    LOG_RETENTION_DAYS,
    ConfigError,
    ExistingVpc,
    ProxyStackConfig,
)
from registry_proxy_infra.stack import RETENTION

from .scenarios import CERTIFICATE_ARN, SECRET_ARN


def read(context: Mapping[str, Any]) -> ProxyStackConfig:
    return ProxyStackConfig.from_context(context.get)


EXISTING = {
    "vpcId": "vpc-0a1b2c3d4e5f60718",
    "vpcAvailabilityZones": ["eu-west-1a", "eu-west-1b"],
    "vpcPrivateSubnetIds": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"],
    "vpcPrivateSubnetRouteTableIds": ["rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"],
    "allowedCidrs": ["10.9.0.0/16"],
}


def test_cdk_json_defaults_match_the_code_defaults() -> None:
    """cdk.json documents the defaults; it must not silently disagree with the code."""
    assert read(cdk_json_context()) == ProxyStackConfig()


def test_empty_context_gives_the_defaults() -> None:
    assert read({}) == ProxyStackConfig()


def test_region_falls_back_to_the_cli_default() -> None:
    empty: dict[str, Any] = {}
    assert ProxyStackConfig.from_context(empty.get, default_region="us-east-2").region == (
        "us-east-2"
    )
    context: dict[str, Any] = {"region": "eu-central-1"}
    assert ProxyStackConfig.from_context(context.get, default_region="us-east-2").region == (
        "eu-central-1"
    )


def test_build_app_without_a_region_says_how_to_give_one() -> None:
    with pytest.raises(ConfigError, match="-c region="):
        build_app({}, default_region=None)


@pytest.mark.parametrize(
    "value",
    [
        "10.1.0.0/16,10.2.0.0/16",
        " 10.1.0.0/16 , 10.2.0.0/16 ",
        '["10.1.0.0/16", "10.2.0.0/16"]',
        ["10.1.0.0/16", "10.2.0.0/16"],
    ],
)
def test_lists_accept_json_and_comma_separated_strings(value: object) -> None:
    assert read({"allowedCidrs": value}).allowed_cidrs == ("10.1.0.0/16", "10.2.0.0/16")


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("0", False), (True, True)])
def test_booleans_accept_strings(value: object, expected: bool) -> None:
    assert read({"blobRedirect": value}).blob_redirect is expected


def test_numbers_accept_strings_from_the_command_line() -> None:
    config = read({"minTasks": "3", "maxTasks": "9", "cacheExpirationDays": "14"})
    assert (config.min_tasks, config.max_tasks, config.cache_expiration_days) == (3, 9, 14)


def test_zero_expiry_means_never() -> None:
    assert read({"cacheExpirationDays": 0}).cache_expiration_days is None


def test_existing_vpc_from_ids() -> None:
    config = read(EXISTING)
    assert config.existing_vpc == ExistingVpc(
        vpc_id="vpc-0a1b2c3d4e5f60718",
        availability_zones=("eu-west-1a", "eu-west-1b"),
        private_subnet_ids=("subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"),
        private_subnet_route_table_ids=("rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"),
    )
    assert read({**EXISTING, "createS3GatewayEndpoint": "false"}).existing_vpc == ExistingVpc(
        vpc_id="vpc-0a1b2c3d4e5f60718",
        availability_zones=("eu-west-1a", "eu-west-1b"),
        private_subnet_ids=("subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"),
        private_subnet_route_table_ids=("rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"),
        create_s3_endpoint=False,
    )


def test_accepted_ids_and_arns() -> None:
    config = read(
        {
            "certificateArn": CERTIFICATE_ARN,
            "dockerHubSecretArn": SECRET_ARN,
            "allowedSecurityGroupIds": "sg-0123456789abcdef0",
            "domainName": "Registry.Example.COM.",
            "hostedZoneId": "Z0123456789ABC",
            "hostedZoneName": "example.com.",
        }
    )
    assert config.domain_name == "registry.example.com"
    assert config.hosted_zone_name == "example.com"


def test_stop_timeout_leaves_room_after_the_grace_period() -> None:
    assert ProxyStackConfig(shutdown_grace_seconds=30).stop_timeout_seconds == 40
    assert ProxyStackConfig(shutdown_grace_seconds=110).stop_timeout_seconds == 120


def test_log_retention_choices_match_the_stack() -> None:
    assert tuple(sorted(RETENTION)) == LOG_RETENTION_DAYS


@pytest.mark.parametrize(
    ("context", "key"),
    [
        ({"region": "Europe"}, "region"),
        ({"allowedCidrs": "0.0.0.0/0"}, "allowedCidrs"),
        ({"allowedCidrs": "10.0.0.1/8"}, "allowedCidrs"),
        ({"allowedSecurityGroupIds": "default"}, "allowedSecurityGroupIds"),
        ({"certificateArn": "arn:aws:iam::123456789012:server-certificate/x"}, "certificateArn"),
        ({"dockerHubSecretArn": SECRET_ARN.removesuffix("-AbC123")}, "dockerHubSecretArn"),
        ({"minTasks": 1}, "minTasks"),
        ({"minTasks": 4, "maxTasks": 3}, "maxTasks"),
        ({"cpu": 1000}, "cpu"),
        ({"cpu": 256, "memoryMiB": 4096}, "memoryMiB"),
        ({"shutdownGraceSeconds": 115}, "shutdownGraceSeconds"),
        ({"idleTimeoutSeconds": 5000}, "idleTimeoutSeconds"),
        ({"logRetentionDays": 10}, "logRetentionDays"),
        ({"natGateways": 3}, "natGateways"),
        ({"upstreamUrl": "http://registry-1.docker.io"}, "upstreamUrl"),
        ({"logLevel": "verbose"}, "logLevel"),
        ({"cachePrefix": "a//b"}, "cachePrefix"),
        ({"hostedZoneId": "Z0123456789ABC"}, "hostedZoneName"),
        ({"hostedZoneId": "Z0123456789ABC", "hostedZoneName": "example.com"}, "domainName"),
        (
            {
                "hostedZoneId": "Z0123456789ABC",
                "hostedZoneName": "example.com",
                "domainName": "registry.example.org",
            },
            "domainName",
        ),
        ({"imageUri": "repo/image:1", "imageFromAsset": True}, "imageFromAsset"),
        ({"imageTag": "has space"}, "imageTag"),
        ({"minTasks": "two"}, "minTasks"),
        ({"blobRedirect": "maybe"}, "blobRedirect"),
        ({"allowedCidrs": "[not json"}, "allowedCidrs"),
        ({"extraEnvironment": {"HOME": "/"}}, "extraEnvironment"),
        ({"extraEnvironment": {"PROXY_UPSTREAM_PASSWORD": "x"}}, "extraEnvironment"),
        ({"extraEnvironment": {"PROXY_UPSTREAM_GHCR_IO_PASSWORD": "x"}}, "extraEnvironment"),
        ({"extraEnvironment": {"PROXY_AUTH_TOKENS": "x"}}, "extraEnvironment"),
        ({**EXISTING, "vpcPrivateSubnetIds": ["subnet-0aaaaaaaaaaaaaaa1"]}, "vpcPrivateSubnetIds"),
        ({**EXISTING, "vpcAvailabilityZones": ["eu-west-1a"]}, "vpcAvailabilityZones"),
        ({**EXISTING, "allowedCidrs": []}, "allowedCidrs"),
    ],
)
def test_invalid_settings_are_refused_naming_the_key(context: Mapping[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        read(context)
