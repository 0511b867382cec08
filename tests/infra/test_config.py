"""Reading and validating the deployment settings (no synthesis: these run in milliseconds)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from registry_proxy_infra.application import INFRA_DIR, build_app, cdk_json_context
from registry_proxy_infra.config import (
    LOG_RETENTION_DAYS,
    ConfigError,
    ExistingVpc,
    ProxyStackConfig,
    settings_table,
)
from registry_proxy_infra.service import RETENTION
from registry_proxy_infra.sizing import (
    BASE_MEMORY_MIB,
    S3_FETCH_MEMORY_MIB,
    SizingError,
    derive_sizes,
)

from proxy.commands.cli import main as certs_main

from .scenarios import (
    CERTIFICATE_ARN,
    CLIENT_CA_BUNDLE,
    CLIENT_CRL,
    FIXTURES,
    KMS_KEY_ARN,
    REQUIRED_CONTEXT,
    SECRET_ARN,
)


def read(context: Mapping[str, Any]) -> ProxyStackConfig:
    return ProxyStackConfig.from_context(context.get)


EXISTING = {
    "vpcId": "vpc-0a1b2c3d4e5f60718",
    "vpcAvailabilityZones": ["eu-west-1a", "eu-west-1b"],
    "vpcPrivateSubnetIds": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"],
    "vpcPrivateSubnetRouteTableIds": ["rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"],
    "existingVpcCidr": "10.9.0.0/16",
    "createS3GatewayEndpoint": True,
}


def test_cdk_json_defaults_match_the_code_defaults() -> None:
    """cdk.json documents the defaults; it must not silently disagree with the code."""
    assert read(cdk_json_context()) == ProxyStackConfig()


def test_every_setting_in_cdk_json_is_a_row() -> None:
    """A misspelt key in cdk.json would be ignored, its default silently used instead."""
    keys = {row.key for _, row in ProxyStackConfig.rows()}
    unknown = sorted(
        key for key in cdk_json_context() if not key.startswith("@") and key not in keys
    )
    assert unknown == []


def readme_settings_table() -> str:
    readme = (INFRA_DIR / "README.md").read_text()
    section = readme[readme.index("\n## Settings\n") :]
    start = section.index("| key |")
    return section[start : section.index("\n\n", start)]


def test_readme_settings_table_is_made_of_the_rows() -> None:
    """One row per setting in config.py; the README's table is what the rows give."""
    assert readme_settings_table() == settings_table(), (
        "infra/README.md's settings table differs from the rows of config.py; the rows give:\n"
        + settings_table()
    )


def test_every_row_has_a_key_of_its_own_and_help() -> None:
    rows = [row for _, row in ProxyStackConfig.rows()]
    assert len({row.key for row in rows}) == len(rows)
    assert all(len(row.help.split()) >= 2 for row in rows)


def test_empty_context_gives_the_defaults() -> None:
    assert read({}) == ProxyStackConfig()


@pytest.mark.parametrize(
    "setting", ["region", "imageTag", "domainName", "certificateArn", "dockerHubSecretArn"]
)
def test_build_app_names_every_setting_a_deployment_must_state(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No fallbacks for what differs per deployment: not the CLI's region (the operator's
    profile, or us-east-1), not a MirrorUrl on the load balancer's own name (no certificate
    covers it), not an empty Docker Hub secret (anonymous pulls nobody chose)."""
    monkeypatch.setenv("CDK_DEFAULT_REGION", "us-east-1")  # what the CLI always sets
    with pytest.raises(ConfigError, match=f'(?s)infra/cdk.json.*"{setting}"'):
        build_app({**REQUIRED_CONTEXT, setting: None})


def test_anonymous_pulls_are_a_choice_not_a_default() -> None:
    anonymous = read({**REQUIRED_CONTEXT, "dockerHubSecretArn": None, "anonymousPulls": "true"})
    assert anonymous.missing() == []
    assert read({**REQUIRED_CONTEXT, "dockerHubSecretArn": None}).missing() != []
    with pytest.raises(ConfigError, match="anonymousPulls"):
        read({**REQUIRED_CONTEXT, "anonymousPulls": "true"})
    with pytest.raises(ConfigError, match="dockerHubSecretKmsKeyArn"):
        read({"dockerHubSecretKmsKeyArn": KMS_KEY_ARN})


def test_a_misspelt_setting_is_refused_with_the_likely_one() -> None:
    with pytest.raises(ConfigError, match=r"domainname \(did you mean domainName\?\)"):
        build_app({**REQUIRED_CONTEXT, "domainname": "registry.example.com"})


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
        cidr="10.9.0.0/16",
    )
    assert read({**EXISTING, "createS3GatewayEndpoint": "false"}).existing_vpc == ExistingVpc(
        vpc_id="vpc-0a1b2c3d4e5f60718",
        availability_zones=("eu-west-1a", "eu-west-1b"),
        private_subnet_ids=("subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"),
        private_subnet_route_table_ids=("rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"),
        cidr="10.9.0.0/16",
        create_s3_endpoint=False,
    )


def test_existing_vpc_needs_its_own_range_never_the_new_vpcs_default() -> None:
    """cdk.json gives vpcCidr (the range of a VPC the stack creates) a default, so it cannot
    stand for an existing VPC's range: that one is a setting of its own, required with vpcId."""
    without_range = {key: value for key, value in EXISTING.items() if key != "existingVpcCidr"}
    for context in (without_range, {**cdk_json_context(), **without_range}):
        with pytest.raises(ConfigError, match=r"vpcId=.* needs existingVpcCidr"):
            read(context)
    config = read({**cdk_json_context(), **EXISTING})
    assert config.existing_vpc is not None and config.existing_vpc.cidr == "10.9.0.0/16"


def test_existing_vpc_says_whether_it_has_an_s3_endpoint() -> None:
    """AWS refuses a second S3 gateway endpoint on a route table: no default to trip over."""
    without_choice = {
        key: value for key, value in EXISTING.items() if key != "createS3GatewayEndpoint"
    }
    with pytest.raises(ConfigError, match="createS3GatewayEndpoint=false when the VPC has one"):
        read(without_choice)


def test_an_existing_vpcs_description_without_its_id_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"existingVpcCidr.* give its vpcId"):
        read({"existingVpcCidr": "10.9.0.0/16"})


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
        ({"imageTag": "latest"}, "imageTag"),
        ({"imageDigest": "sha256:abc"}, "imageDigest"),
        ({"imageTag": "v1", "imageDigest": "sha256:" + "a" * 64}, "imageDigest"),
        ({"imageUri": "public.ecr.aws/example/registry-proxy"}, "imageUri"),
        ({"imageUri": "public.ecr.aws/example/registry-proxy:latest"}, "imageUri"),
        ({"imageUri": "registry.example.com:5000/proxy"}, "imageUri"),
        ({"imageUri": "repo/image:1", "imageTag": "v1"}, "imageTag"),
        ({"alarmEmails": "ops"}, "alarmEmails"),
        ({"alarmHttpsEndpoints": "http://events.example.com"}, "alarmHttpsEndpoints"),
        ({"operatorCidrs": "10.0.0.1/8"}, "operatorCidrs"),
        ({"containerInsights": "sometimes"}, "containerInsights"),
        ({"ecsExec": "maybe"}, "ecsExec"),
        ({"spoolPerFetchMiB": 8}, "spoolPerFetchMiB"),
        ({"ephemeralStorageGiB": 21, "spoolPerFetchMiB": 65536}, "spoolPerFetchMiB"),
        ({"extraEnvironment": {"PROXY_MAX_UPSTREAM_FETCHES": "64"}}, "PROXY_MAX_UPSTREAM_FETCHES"),
        ({"minTasks": "two"}, "minTasks"),
        ({"blobRedirect": "maybe"}, "blobRedirect"),
        ({"allowedCidrs": "[not json"}, "allowedCidrs"),
        ({"extraEnvironment": {"HOME": "/"}}, "extraEnvironment"),
        ({"extraEnvironment": {"PROXY_UPSTREAM_PASSWORD": "x"}}, "extraEnvironment"),
        ({"extraEnvironment": {"PROXY_UPSTREAM_GHCR_IO_PASSWORD": "x"}}, "extraEnvironment"),
        ({"extraEnvironment": {"PROXY_AUTH_TOKENS": "x"}}, "extraEnvironment"),
        ({**EXISTING, "vpcPrivateSubnetIds": ["subnet-0aaaaaaaaaaaaaaa1"]}, "vpcPrivateSubnetIds"),
        ({**EXISTING, "vpcAvailabilityZones": ["eu-west-1a"]}, "vpcAvailabilityZones"),
        ({**EXISTING, "existingVpcCidr": "10.9.0.0/33"}, "existingVpcCidr"),
        ({"vpcAvailabilityZones": "eu-west-1a,eu-west-1b"}, "vpcAvailabilityZones"),
    ],
)
def test_invalid_settings_are_refused_naming_the_key(context: Mapping[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        read(context)


def test_image_is_pinned_by_tag_digest_or_uri() -> None:
    assert read({}).image_missing
    assert not read({"imageTag": "3f2a9c1"}).image_missing
    digest = "sha256:" + "0123456789abcdef" * 4
    assert read({"imageDigest": digest}).image_digest == digest
    assert not read({"imageUri": "public.ecr.aws/example/registry-proxy@" + digest}).image_missing
    assert not read({"imageFromAsset": True}).image_missing


def test_operational_settings() -> None:
    config = read(
        {
            "alarmEmails": "ops@example.com, builds@example.com",
            "alarmHttpsEndpoints": ["https://events.example.com/sns"],
            "operatorCidrs": "10.60.0.0/24",
            "containerInsights": "false",
            "ecsExec": "true",
        }
    )
    assert config.alarm_emails == ("ops@example.com", "builds@example.com")
    assert config.alarm_https_endpoints == ("https://events.example.com/sns",)
    assert config.operator_cidrs == ("10.60.0.0/24",)
    assert (config.container_insights, config.ecs_exec) == (False, True)
    defaults = read({})
    assert (defaults.container_insights, defaults.ecs_exec) == (True, False)
    assert defaults.deregistration_delay_seconds == 300


@pytest.mark.parametrize(
    ("memory", "storage", "per_fetch", "fetches", "spool_gib"),
    [
        (2048, 40, 1024, 35, 35),  # the defaults: the disk decides
        (1024, 40, 1024, 16, 35),  # a small task: the memory decides
        (8192, 200, 512, 64, 195),  # a large one: capped
        (2048, 21, 4096, 4, 16),  # huge layers on a small disk
    ],
)
def test_sizes_follow_from_the_task(
    memory: int, storage: int, per_fetch: int, fetches: int, spool_gib: int
) -> None:
    sizes = derive_sizes(memory, storage, per_fetch)
    assert sizes.max_upstream_fetches == fetches
    assert sizes.spool_max_bytes == spool_gib * 1024**3
    assert sizes.environment["PROXY_MEMORY_LIMIT"] == (
        f"{memory // 1024}GiB" if memory % 1024 == 0 else f"{memory}MiB"
    )
    # what the proxy needs for that many S3 uploads fits the task's memory
    assert BASE_MEMORY_MIB + fetches * S3_FETCH_MEMORY_MIB <= memory
    # and the spool budget plus the free space kept fits the ephemeral storage
    assert spool_gib + 1 < storage


def test_a_task_too_small_for_one_fetch_is_refused() -> None:
    with pytest.raises(SizingError, match="spoolPerFetchMiB"):
        derive_sizes(2048, 21, 65536)
    with pytest.raises(SizingError, match="memoryMiB=256"):
        derive_sizes(256, 40, 1024)


def test_extra_environment_may_lower_the_fetch_limit() -> None:
    config = read({"extraEnvironment": {"PROXY_MAX_UPSTREAM_FETCHES": "10"}})
    assert config.extra_environment["PROXY_MAX_UPSTREAM_FETCHES"] == "10"


INTERNET = {
    "internetFacing": True,
    "internetDomainName": "registry-ext.example.com",
    "clientCaBundleFile": CLIENT_CA_BUNDLE,
}


def test_internet_facing_settings_are_read() -> None:
    config = read({**INTERNET, "internetAllowedCidrs": "13.112.191.184/29"})
    assert config.internet_facing
    assert config.internet_allowed_cidrs == ("13.112.191.184/29",)


@pytest.mark.parametrize(
    ("context", "key"),
    [
        ({"internetDomainName": "registry-ext.example.com"}, "internetFacing=true"),
        ({"clientCaBundleFile": CLIENT_CA_BUNDLE}, "internetFacing=true"),
        ({**INTERNET, "internetDomainName": None}, "internetDomainName"),
        ({**INTERNET, "clientCaBundleFile": None}, "clientCaBundleFile"),
        ({**INTERNET, "clientCaBundleFile": "no-such.pem"}, "clientCaBundleFile"),
        ({**INTERNET, "clientCaBundleFile": CLIENT_CRL}, "clientCaBundleFile"),
        ({**INTERNET, "clientRevocationListFile": CLIENT_CA_BUNDLE}, "clientRevocationListFile"),
        ({**INTERNET, "internetAllowedCidrs": "0.0.0.0/0"}, "internetAllowedCidrs"),
        ({**INTERNET, "domainName": "registry-ext.example.com"}, "a name each"),
        (
            {**EXISTING, **INTERNET, "vpcPublicSubnetIds": "subnet-0ddddddddddddddd4"},
            "vpcPublicSubnetIds",
        ),
    ],
)
def test_invalid_internet_facing_settings_are_refused(context: Mapping[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        read(context)


def test_the_revocation_list_is_read_and_must_be_the_bundles_cas(tmp_path: Path) -> None:
    """The list's entries are read at synthesis (none in the fixture: nothing to revoke), and a
    list another CA signed is refused before the load balancer would refuse it at deploy."""
    config = read({**INTERNET, "clientRevocationListFile": CLIENT_CRL})
    assert config.revoked_client_serials == ()
    assert read(INTERNET).revoked_client_serials == ()
    other = tmp_path / "other-ca"
    command = ["certs", "init-ca", "--dir", str(other), "--publish", str(tmp_path / "published")]
    assert certs_main(command) == 0
    with pytest.raises(ConfigError, match="not signed by a CA of clientCaBundleFile"):
        read({**INTERNET, "clientRevocationListFile": str(tmp_path / "published" / "crl.pem")})
    broken = tmp_path / "broken.crl.pem"
    broken.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigError, match=r"clientRevocationListFile.*cannot be read"):
        read({**INTERNET, "clientRevocationListFile": str(broken)})


def test_a_bundle_with_a_private_key_is_refused(tmp_path: Path) -> None:
    """The CA's key never goes into the stack (nor the repository)."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(
        (FIXTURES / "client-ca.pem").read_text()
        + "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n"
    )
    with pytest.raises(ConfigError, match="holds a private key"):
        read({**INTERNET, "clientCaBundleFile": str(bundle)})
