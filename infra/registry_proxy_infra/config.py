"""Deployment settings: one row per CDK context key, read and validated before anything is built.

Each field of ``ProxyStackConfig`` is one setting, declared once with ``setting(...)``: its
context key, its parser, its default, its help text and the checks on its value.  From these
rows come the reading of the context (``from_context``), the error messages (which name the key
and the accepted values) and the settings table of infra/README.md (``settings_table``; a test
fails when the README's table and the rows disagree).  Rules between settings (a range that
depends on another setting, settings that go together or exclude each other) are in
``ProxyStackConfig.validate``.

Every setting is a context key: the deployment's values live in the ``context`` of ``cdk.json``,
which every ``cdk synth`` and ``cdk deploy`` reads; ``-c key=value`` overrides them for one run.
Values given with ``-c`` arrive as strings, values from ``cdk.json`` keep their JSON type; both
are accepted.  Nothing here talks to AWS: the stack must synthesize offline, so an existing VPC
is described by its ids and its range rather than looked up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from registry_proxy_infra.sizing import (
    ProxySizes,
    SizingError,
    derive_sizes,
    fetches_fitting_memory,
)

ContextGetter = Callable[[str], Any]
Parser = Callable[[str, object], Any]
Check = Callable[[str, Any], None]

# cdk.json's directory: file settings are relative to it.
INFRA_DIR = Path(__file__).resolve().parent.parent
DOCKER_HUB_URL = "https://registry-1.docker.io"
DEFAULT_VPC_CIDR = "10.80.0.0/16"

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)  # fmt: skip

# Fargate task sizes: CPU units -> the memory sizes (MiB) allowed with it.
FARGATE_MEMORY: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}

# ECS waits at most 120 s between SIGTERM and SIGKILL on Fargate; keep a margin for the exit.
MAX_FARGATE_STOP_TIMEOUT = 120
STOP_TIMEOUT_MARGIN = 10

LOG_LEVELS = ("debug", "info", "warning", "error")
# How the README's settings table shows "no default" (an en dash).
NONE_SHOWN = "\N{EN DASH}"

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$")
# A complete secret ARN ends in the six characters Secrets Manager appends to the name.
_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+-[A-Za-z0-9]{6}$"
)
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")
_SECURITY_GROUP_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_ROUTE_TABLE_ID = re.compile(r"^rtb-[0-9a-f]{8,17}$")
_HOSTED_ZONE_ID = re.compile(r"^Z[A-Z0-9]{1,31}$")
_AZ = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_IMAGE_URI = re.compile(r"^[a-z0-9]([\w.:/-]*[\w])?(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$")
_REPOSITORY_NAME = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
_IMAGE_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# The last path segment of an image reference carries its tag (name:tag) or digest (@sha256:).
_PINNED_URI = re.compile(r"(@sha256:[0-9a-f]{64}|:[\w][\w.-]{0,127})$")
_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[A-Za-z]{2,}$")
_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")


class ConfigError(ValueError):
    """A context value the stack cannot use; the message names the context key."""


# ---------------------------------------------------------------------- parsers


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def text(key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return str(value).strip()


def integer(key: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ConfigError(f"{key}: expected a whole number, got {value!r}")


def flag(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def strings(key: str, value: object) -> tuple[str, ...]:
    """A list: a JSON array, or a comma-separated string from ``-c key=a,b``."""
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped.startswith("["):
            return tuple(part.strip() for part in stripped.split(",") if part.strip())
        value = _json(key, stripped)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(item.strip() for item in value if item.strip())
    raise ConfigError(f"{key}: expected a list of strings, got {value!r}")


def mapping(key: str, value: object) -> dict[str, str]:
    if isinstance(value, str):
        value = _json(key, value)
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        return {k: str(v) for k, v in value.items()}
    raise ConfigError(f"{key}: expected an object of strings, got {value!r}")


def _then(parse: Parser, normalise: Callable[[Any], Any]) -> Parser:
    return lambda key, value: normalise(parse(key, value))


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key}: not valid JSON ({exc.msg})") from None


def _dns_name(name: str) -> str:
    return name.lower().rstrip(".")


# ---------------------------------------------------------------------- checks


def pattern(regex: re.Pattern[str], example: str) -> Check:
    def check(key: str, value: str) -> None:
        if not regex.match(value):
            raise ConfigError(f"{key}={value!r}: expected something like {example}")

    return check


def between(low: int, high: int) -> Check:
    def check(key: str, value: int) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{key}={value}: expected a number from {low} to {high}")

    return check


def one_of(*allowed: object) -> Check:
    def check(key: str, value: object) -> None:
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, allowed))}")

    return check


def cidr(key: str, value: str) -> None:
    _network(key, value)


def not_everyone(key: str, value: str) -> None:
    if _network(key, value).prefixlen == 0:
        raise ConfigError(
            f"{key}: {value!r} lets in every address; list the CodeBuild networks instead"
        )


def https_url(key: str, value: str) -> None:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ConfigError(f"{key}={value!r}: expected an https:// URL")


def each(*checks: Check) -> Check:
    """Apply ``checks`` to every item of a list setting."""

    def check(key: str, values: tuple[str, ...]) -> None:
        for value in values:
            for item_check in checks:
                item_check(key, value)

    return check


def _network(key: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{key}: {value!r} is not an IPv4 CIDR block ({exc})") from None


# ---------------------------------------------------------------------- the rows


@dataclass(frozen=True, slots=True)
class Setting:
    """One context key: how it is read, checked and documented."""

    key: str
    parse: Parser
    help: str
    checks: tuple[Check, ...] = ()
    # How README.md shows the default, when not the default value itself.
    shown: str | None = None


def setting(
    key: str,
    parse: Parser,
    default: Any,
    help: str,
    *checks: Check,
    shown: str | None = None,
) -> Any:
    """A field of ``ProxyStackConfig`` that is read from the context key ``key``."""
    metadata = {"setting": Setting(key, parse, help, checks, shown)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class ExistingVpc:
    """A VPC that already exists, described by ids so that synthesis needs no lookup."""

    vpc_id: str
    availability_zones: tuple[str, ...]
    private_subnet_ids: tuple[str, ...]
    private_subnet_route_table_ids: tuple[str, ...]
    cidr: str | None = None
    create_s3_endpoint: bool = True


@dataclass(frozen=True, slots=True)
class ProxyStackConfig:
    """Everything the stack needs to know; build it with ``from_context`` or directly in tests."""

    region: str | None = setting(
        "region", text, None,
        "region to deploy to (required: the CDK CLI's fallback, your profile's region or "
        "us-east-1, would put each operator's deploy wherever their shell points)",
        pattern(_REGION, "eu-west-1"),
    )  # fmt: skip
    stack_name: str = setting(
        "stackName", text, "RegistryProxy", "CloudFormation stack name",
        pattern(_STACK_NAME, "RegistryProxy (letters, digits and -)"),
    )  # fmt: skip
    # network
    vpc_cidr: str = setting(
        "vpcCidr", text, DEFAULT_VPC_CIDR,
        "range of the VPC the stack creates (not used with `vpcId`)", cidr,
    )  # fmt: skip
    max_azs: int = setting(
        "maxAzs", integer, 2, "zones of the created VPC", between(2, 6)
    )  # fmt: skip
    nat_gateways: int = setting(
        "natGateways", integer, 2, "NAT gateways of the created VPC (at most `maxAzs`)",
        between(1, 6),
    )  # fmt: skip
    vpc_id: str | None = setting(
        "vpcId", text, None,
        "use this VPC instead of creating one; then also give `existingVpcCidr`, "
        "`vpcAvailabilityZones`, `vpcPrivateSubnetIds` and `vpcPrivateSubnetRouteTableIds` (one "
        "per zone, same order)",
        pattern(_VPC_ID, "vpc-0123456789abcdef0"),
    )  # fmt: skip
    existing_vpc_cidr: str | None = setting(
        "existingVpcCidr", text, None,
        "with `vpcId` (and required with it): that VPC's IPv4 range, the load balancer's default "
        "ingress and the addresses the proxy trusts `X-Forwarded-For` from",
        cidr,
    )  # fmt: skip
    vpc_availability_zones: tuple[str, ...] = setting(
        "vpcAvailabilityZones", strings, (), "with `vpcId`: its zones (at least two)",
        each(pattern(_AZ, "eu-west-1a")),
    )  # fmt: skip
    vpc_private_subnet_ids: tuple[str, ...] = setting(
        "vpcPrivateSubnetIds", strings, (),
        "with `vpcId`: one private subnet per zone, with a route to the internet (NAT)",
        each(pattern(_SUBNET_ID, "subnet-0123456789abcdef0")),
    )  # fmt: skip
    vpc_private_subnet_route_table_ids: tuple[str, ...] = setting(
        "vpcPrivateSubnetRouteTableIds", strings, (),
        "with `vpcId`: the route table of each of those subnets",
        each(pattern(_ROUTE_TABLE_ID, "rtb-0123456789abcdef0")),
    )  # fmt: skip
    create_s3_gateway_endpoint: bool | None = setting(
        "createS3GatewayEndpoint", flag, None,
        "with `vpcId` (and required with it): `true` adds an S3 gateway endpoint to those route "
        "tables; `false` when the VPC has one on them already (AWS refuses a second)",
    )  # fmt: skip
    allowed_cidrs: tuple[str, ...] = setting(
        "allowedCidrs", strings, (), "IPv4 ranges allowed to reach the load balancer on 443",
        each(not_everyone),
    )  # fmt: skip
    allowed_security_group_ids: tuple[str, ...] = setting(
        "allowedSecurityGroupIds", strings, (),
        "security groups allowed to reach the load balancer on 443",
        each(pattern(_SECURITY_GROUP_ID, "sg-0123abcd")),
    )  # fmt: skip
    # TLS and naming
    certificate_arn: str | None = setting(
        "certificateArn", text, None,
        "ACM certificate (in `region`) of the HTTPS listener; it must cover `domainName` "
        "(required)",
        pattern(_CERTIFICATE_ARN, "arn:aws:acm:REGION:ACCOUNT:certificate/ID"),
    )  # fmt: skip
    domain_name: str | None = setting(
        "domainName", _then(text, _dns_name), None,
        "the name clients use, covered by the certificate; `MirrorUrl` is `https://` and this "
        "(required)",
        pattern(_DNS_NAME, "registry.example.com"),
    )  # fmt: skip
    hosted_zone_id: str | None = setting(
        "hostedZoneId", text, None,
        "Route 53 zone in which to create `domainName` as an alias of the load balancer "
        "(with `hostedZoneName`)",
        pattern(_HOSTED_ZONE_ID, "Z0123456789AB"),
    )  # fmt: skip
    hosted_zone_name: str | None = setting(
        "hostedZoneName", _then(text, _dns_name), None, "the name of that zone",
        pattern(_DNS_NAME, "example.com"),
    )  # fmt: skip
    # builds outside any VPC: an internet-facing load balancer with mutual TLS
    internet_facing: bool = setting(
        "internetFacing", flag, False,
        "add an internet-facing load balancer in the public subnets for builds outside any VPC: "
        "HTTPS only, each client must show a certificate issued by the CA in `clientCaBundleFile` "
        "(mutual TLS, verify mode); the internal one stays",
    )  # fmt: skip
    internet_domain_name: str | None = setting(
        "internetDomainName", _then(text, _dns_name), None,
        "with `internetFacing` (and required with it): the name outside builds use, covered by "
        "`internetCertificateArn`; `InternetMirrorUrl` is `https://` and this",
        pattern(_DNS_NAME, "registry-ext.build.example.com"),
    )  # fmt: skip
    internet_certificate_arn: str | None = setting(
        "internetCertificateArn", text, None,
        "with `internetFacing`: the ACM certificate for `internetDomainName` (default: "
        "`certificateArn`, which must then cover both names)",
        pattern(_CERTIFICATE_ARN, "arn:aws:acm:REGION:ACCOUNT:certificate/ID"),
    )  # fmt: skip
    client_ca_bundle_file: str | None = setting(
        "clientCaBundleFile", text, None,
        "with `internetFacing` (and required with it): path, relative to `infra/`, of the PEM "
        "bundle of the CA certificates that issue the builds' client certificates (the "
        "certificates only, never a key); the trust store's content, uploaded as a CDK asset",
    )  # fmt: skip
    client_revocation_list_file: str | None = setting(
        "clientRevocationListFile", text, None,
        "with `internetFacing`: path, relative to `infra/`, of a PEM certificate revocation list "
        "issued by that CA; revoked client certificates are refused (a list that revokes nothing "
        "is left out of the trust store)",
    )  # fmt: skip
    internet_allowed_cidrs: tuple[str, ...] = setting(
        "internetAllowedCidrs", strings, (),
        "with `internetFacing`: IPv4 ranges allowed to reach it on 443 (e.g. the region's "
        "CodeBuild ranges), defence in depth; empty means any address, each still needing a "
        "client certificate",
        each(not_everyone),
    )  # fmt: skip
    vpc_public_subnet_ids: tuple[str, ...] = setting(
        "vpcPublicSubnetIds", strings, (),
        "with `vpcId` and `internetFacing`: one public subnet per zone of "
        "`vpcAvailabilityZones`, same order, for the internet-facing load balancer",
        each(pattern(_SUBNET_ID, "subnet-0123456789abcdef0")),
    )  # fmt: skip
    # image
    image_repository_name: str = setting(
        "imageRepositoryName", text, "registry-proxy",
        "ECR repository (this account and region; create it tag-immutable)",
        pattern(_REPOSITORY_NAME, "registry-proxy"),
    )  # fmt: skip
    image_tag: str | None = setting(
        "imageTag", text, None,
        "the image to run from that repository, by tag (not `latest`); this, `imageDigest`, "
        "`imageUri` or `imageFromAsset` is required",
        pattern(_IMAGE_TAG, "v1.2.3"),
    )  # fmt: skip
    image_digest: str | None = setting(
        "imageDigest", text, None, "the image to run from that repository, by digest",
        pattern(_IMAGE_DIGEST, "sha256:0123..."),
    )  # fmt: skip
    image_uri: str | None = setting(
        "imageUri", text, None,
        "any image reference instead, with a fixed tag or a digest (no ECR permissions are "
        "granted for it)",
        pattern(_IMAGE_URI, "REGISTRY/NAME:TAG"),
    )  # fmt: skip
    image_from_asset: bool = setting(
        "imageFromAsset", flag, False, "build the repository's Dockerfile during deploy"
    )  # fmt: skip
    # credentials
    docker_hub_secret_arn: str | None = setting(
        "dockerHubSecretArn", text, None,
        "complete ARN of the secret holding the Docker Hub account the proxy pulls with "
        "(`username`, `token`); required unless `anonymousPulls`",
        pattern(_SECRET_ARN, "arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf"),
    )  # fmt: skip
    docker_hub_secret_kms_key_arn: str | None = setting(
        "dockerHubSecretKmsKeyArn", text, None,
        "the customer-managed KMS key that secret is encrypted with, if any: the task execution "
        "role may then decrypt with it through Secrets Manager",
        pattern(_KMS_KEY_ARN, "arn:aws:kms:REGION:ACCOUNT:key/ID"),
    )  # fmt: skip
    anonymous_pulls: bool = setting(
        "anonymousPulls", flag, False,
        "pull from Docker Hub without an account, on purpose: every task shares the NAT "
        "gateways' anonymous rate limit",
    )  # fmt: skip
    # cache bucket and logs
    cache_prefix: str = setting(
        "cachePrefix", _then(text, lambda prefix: prefix.strip("/")), "cache",
        "key prefix in the bucket (`PROXY_STORAGE=s3://BUCKET/cache`)",
        pattern(_PREFIX, "cache"),
    )  # fmt: skip
    # Days without a pull after which cache entries are deleted (PROXY_CACHE_EXPIRE_UNUSED).
    cache_expiration_days: int | None = setting(
        "cacheExpirationDays", _then(integer, lambda days: days or None), None,
        "delete cached entries nobody pulled for this many days (`PROXY_CACHE_EXPIRE_UNUSED`: "
        "by last use, not by age; a base image every build uses stays)",
        between(1, 3650), shown="`0` (never)",
    )  # fmt: skip
    access_log_retention_days: int = setting(
        "accessLogRetentionDays", integer, 90, "expiry of load balancer, S3 and flow logs",
        between(1, 3650),
    )  # fmt: skip
    log_retention_days: int = setting(
        "logRetentionDays", integer, 30,
        "retention of the proxy's log group (a CloudWatch Logs value)",
        one_of(*LOG_RETENTION_DAYS),
    )  # fmt: skip
    # operations
    alarm_emails: tuple[str, ...] = setting(
        "alarmEmails", strings, (),
        "email addresses subscribed to the alarm topic (each confirms by mail)",
        each(pattern(_EMAIL, "ops@example.com")),
    )  # fmt: skip
    alarm_https_endpoints: tuple[str, ...] = setting(
        "alarmHttpsEndpoints", strings, (),
        "HTTPS endpoints subscribed to the alarm topic (a paging or chat integration's SNS URL)",
        each(https_url),
    )  # fmt: skip
    operator_cidrs: tuple[str, ...] = setting(
        "operatorCidrs", strings, (),
        "`PROXY_OPERATOR_CIDRS`: networks that may read `/metrics` and `/status` through the "
        "load balancer",
        each(cidr), shown=f"{NONE_SHOWN} (only from inside the task)",
    )  # fmt: skip
    container_insights: bool = setting(
        "containerInsights", flag, True,
        "Container Insights on the cluster (it feeds the running-tasks alarm; billed per metric)",
    )  # fmt: skip
    ecs_exec: bool = setting(
        "ecsExec", flag, False,
        "ECS Exec into the tasks (`aws ecs execute-command`); it needs a writable root "
        "filesystem, so turning it on turns the read-only root off",
    )  # fmt: skip
    # service size and scaling
    min_tasks: int = setting(
        "minTasks", integer, 2,
        "fewest tasks, held by autoscaling (deployments keep the current count)",
        between(2, 100),
    )  # fmt: skip
    max_tasks: int = setting(
        "maxTasks", integer, 6, "most tasks (at least `minTasks`)", between(2, 100)
    )  # fmt: skip
    cpu_target_percent: int = setting(
        "cpuTargetPercent", integer, 60,
        "CPU, in percent of the one vCPU the proxy's event loop can use, that one scaling "
        "policy aims for (the other tracks requests in progress; see \"Scaling\")",
        between(10, 90),
    )  # fmt: skip
    cpu: int = setting(
        "cpu", integer, 1024, "Fargate task CPU units", one_of(*FARGATE_MEMORY)
    )  # fmt: skip
    memory_mib: int = setting(
        "memoryMiB", integer, 2048, "Fargate task memory (a size that Fargate allows with `cpu`)"
    )  # fmt: skip
    ephemeral_storage_gib: int = setting(
        "ephemeralStorageGiB", integer, 40,
        "task disk, used for in-flight downloads (`PROXY_SPOOL_DIR=/var/lib/registry-proxy/spool`)",
        between(21, 200),
    )  # fmt: skip
    spool_per_fetch_mib: int = setting(
        "spoolPerFetchMiB", integer, 1024,
        "spool room planned for each upstream fetch at once: the size of the largest layers you "
        "pull",
        between(16, 64 * 1024),
    )  # fmt: skip
    # load balancer and draining
    idle_timeout_seconds: int = setting(
        "idleTimeoutSeconds", integer, 900, "load balancer idle timeout", between(60, 4000)
    )  # fmt: skip
    deregistration_delay_seconds: int = setting(
        "deregistrationDelaySeconds", integer, 300,
        "how long the load balancer lets requests to a stopping task finish",
        between(0, 3600),
    )  # fmt: skip
    shutdown_grace_seconds: int = setting(
        "shutdownGraceSeconds", integer, 100,
        "`PROXY_SHUTDOWN_GRACE`, the proxy's one deadline after SIGTERM; ECS waits this plus "
        "10 s (at most 120 s) before SIGKILL",
        between(1, MAX_FARGATE_STOP_TIMEOUT - STOP_TIMEOUT_MARGIN),
    )  # fmt: skip
    # proxy settings passed as environment
    upstream_url: str = setting(
        "upstreamUrl", _then(text, lambda url: url.rstrip("/")), DOCKER_HUB_URL,
        "`PROXY_UPSTREAM_URL`: the registry the proxy pulls from",
        https_url,
    )  # fmt: skip
    tag_ttl_seconds: int = setting(
        "tagTtlSeconds", integer, 300,
        "`PROXY_TAG_TTL`: how long a tag is answered from the cache before it is checked upstream",
        between(0, 7 * 24 * 3600),
    )  # fmt: skip
    blob_redirect: bool = setting(
        "blobRedirect", flag, False,
        "`PROXY_BLOB_REDIRECT`: answer cached blob GETs with a 307 to a presigned S3 URL "
        "(clients then need a route to S3)",
    )  # fmt: skip
    log_level: str = setting(
        "logLevel", _then(text, str.lower), "info",
        "`PROXY_LOG_LEVEL`: `debug`, `info`, `warning` or `error`", one_of(*LOG_LEVELS),
    )  # fmt: skip
    extra_environment: Mapping[str, str] = setting(
        "extraEnvironment", mapping, {}, "JSON object of further `PROXY_*` settings"
    )  # fmt: skip
    nag: bool = setting(
        "nag", flag, True, "run cdk-nag's AwsSolutions checks during synth"
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived values

    @property
    def existing_vpc(self) -> ExistingVpc | None:
        if self.vpc_id is None:
            return None
        return ExistingVpc(
            vpc_id=self.vpc_id,
            availability_zones=self.vpc_availability_zones,
            private_subnet_ids=self.vpc_private_subnet_ids,
            private_subnet_route_table_ids=self.vpc_private_subnet_route_table_ids,
            cidr=self.existing_vpc_cidr,
            create_s3_endpoint=bool(self.create_s3_gateway_endpoint),
        )

    @property
    def uses_existing_vpc(self) -> bool:
        return self.vpc_id is not None

    @property
    def uses_image_repository(self) -> bool:
        """The image comes from the ECR repository by tag or digest (not a URI, not an asset)."""
        return self.image_uri is None and not self.image_from_asset

    @property
    def image_missing(self) -> bool:
        """No image to run was named: a deployment must say exactly which build it runs."""
        return self.uses_image_repository and self.image_tag is None and self.image_digest is None

    def missing(self) -> list[str]:
        """What a deployment must state and this configuration does not: each as advice.

        Kept apart from ``validate`` so that the defaults alone still make a configuration
        (the README's table and the tests are made from it); ``build_app`` refuses to
        synthesize while anything is missing.
        """
        missing = []
        if self.region is None:
            missing.append('"region": the region to deploy to, e.g. "eu-west-1"')
        if self.image_missing:
            missing.append(
                f'"imageTag": the tag of the image pushed to the ECR repository '
                f"{self.image_repository_name!r} (or imageDigest, imageUri or imageFromAsset)"
            )
        if self.domain_name is None:
            missing.append(
                '"domainName": the name builds use for the mirror, e.g. '
                '"registry.build.example.com" (Docker requires HTTPS with a certificate for it)'
            )
        if self.certificate_arn is None:
            missing.append('"certificateArn": the ACM certificate for domainName, in the region')
        if self.docker_hub_secret_arn is None and not self.anonymous_pulls:
            missing.append(
                '"dockerHubSecretArn": the secret with the Docker Hub account to pull with (or '
                '"anonymousPulls": true, to share the anonymous rate limit on purpose)'
            )
        return missing

    @property
    def revoked_client_serials(self) -> tuple[int, ...]:
        """The serials of the client certificates ``clientRevocationListFile`` revokes (none
        without one). An empty list revokes nothing, and the stack then makes no trust store
        revocation for it (mutual_tls.ClientTrust)."""
        if self.client_revocation_list_file is None or self.client_ca_bundle_file is None:
            return ()
        return revoked_serials(
            "clientRevocationListFile",
            self.client_revocation_list_file,
            ca_certificates("clientCaBundleFile", self.client_ca_bundle_file),
        )

    @property
    def sizes(self) -> ProxySizes:
        """The proxy's fetch limit, spool budget and memory limit for this task size."""
        return derive_sizes(self.memory_mib, self.ephemeral_storage_gib, self.spool_per_fetch_mib)

    @property
    def stop_timeout_seconds(self) -> int:
        """Seconds ECS waits after SIGTERM before SIGKILL: the drain grace plus a margin."""
        return min(self.shutdown_grace_seconds + STOP_TIMEOUT_MARGIN, MAX_FARGATE_STOP_TIMEOUT)

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Each value against its row's checks, then the rules between settings."""
        for row, value in self.settings():
            if value is not None:
                for check in row.checks:
                    check(row.key, value)
        if self.nat_gateways > self.max_azs:
            raise ConfigError(
                f"natGateways={self.nat_gateways}: expected a number from 1 to "
                f"maxAzs={self.max_azs}"
            )
        if self.max_tasks < self.min_tasks:
            raise ConfigError(
                f"maxTasks={self.max_tasks}: expected at least minTasks={self.min_tasks}"
            )
        self._validate_existing_vpc()
        self._validate_names()
        self._validate_internet_facing()
        self._validate_image()
        if self.anonymous_pulls and self.docker_hub_secret_arn is not None:
            raise ConfigError(
                "anonymousPulls=true and dockerHubSecretArn exclude each other: pull with the "
                "account in the secret, or anonymously"
            )
        if self.docker_hub_secret_kms_key_arn is not None and self.docker_hub_secret_arn is None:
            raise ConfigError(
                "dockerHubSecretKmsKeyArn is the key of the secret in dockerHubSecretArn: give "
                "that too"
            )
        allowed = FARGATE_MEMORY[self.cpu]
        if self.memory_mib not in allowed:
            raise ConfigError(
                f"memoryMiB={self.memory_mib} does not fit cpu={self.cpu}: Fargate accepts "
                f"{allowed[0]} to {allowed[-1]} in steps of {_step(allowed)}"
            )
        try:
            sizes = self.sizes
        except SizingError as exc:
            raise ConfigError(str(exc)) from None
        self._validate_extra_environment(sizes)

    def _validate_existing_vpc(self) -> None:
        described = {
            "existingVpcCidr": self.existing_vpc_cidr,
            "vpcAvailabilityZones": self.vpc_availability_zones,
            "vpcPrivateSubnetIds": self.vpc_private_subnet_ids,
            "vpcPrivateSubnetRouteTableIds": self.vpc_private_subnet_route_table_ids,
        }
        if self.vpc_id is None:
            given = [key for key, value in described.items() if value]
            if self.create_s3_gateway_endpoint is not None:
                given.append("createS3GatewayEndpoint")
            if given:
                raise ConfigError(
                    f"{', '.join(given)} describe an existing VPC: give its vpcId too, or leave "
                    "them out to have the stack create a VPC (of vpcCidr)"
                )
            return
        if self.existing_vpc_cidr is None:
            raise ConfigError(
                f"vpcId={self.vpc_id!r} needs existingVpcCidr, that VPC's IPv4 range (for "
                "example 10.20.0.0/16; aws ec2 describe-vpcs --vpc-ids ID --query "
                "'Vpcs[0].CidrBlock'): the load balancer admits it by default and the proxy "
                "trusts X-Forwarded-For from it. vpcCidr is the range of a VPC the stack "
                "creates, never used with vpcId"
            )
        if self.create_s3_gateway_endpoint is None:
            raise ConfigError(
                "with vpcId, say whether the stack adds an S3 gateway endpoint to the private "
                "route tables: createS3GatewayEndpoint=true, or createS3GatewayEndpoint=false "
                "when the VPC has one on them already (AWS refuses a second endpoint for S3 on "
                "the same route table)"
            )
        count = len(self.vpc_availability_zones)
        if count < 2:
            raise ConfigError("vpcAvailabilityZones: the load balancer needs at least two zones")
        if (
            len(self.vpc_private_subnet_ids) != count
            or len(self.vpc_private_subnet_route_table_ids) != count
        ):
            raise ConfigError(
                "vpcPrivateSubnetIds and vpcPrivateSubnetRouteTableIds need one entry per zone "
                "in vpcAvailabilityZones, in the same order"
            )

    def _validate_names(self) -> None:
        if (self.hosted_zone_id is None) != (self.hosted_zone_name is None):
            raise ConfigError("hostedZoneId and hostedZoneName go together: give both or neither")
        if self.hosted_zone_name is not None:
            zone = self.hosted_zone_name
            if self.domain_name is None:
                raise ConfigError("hostedZoneId needs domainName: the record to create in it")
            if not (self.domain_name == zone or self.domain_name.endswith("." + zone)):
                raise ConfigError(
                    f"domainName={self.domain_name!r} is not inside hostedZoneName={zone!r}"
                )

    def _validate_internet_facing(self) -> None:
        internet_only = {
            "internetDomainName": self.internet_domain_name,
            "internetCertificateArn": self.internet_certificate_arn,
            "clientCaBundleFile": self.client_ca_bundle_file,
            "clientRevocationListFile": self.client_revocation_list_file,
            "internetAllowedCidrs": self.internet_allowed_cidrs,
            "vpcPublicSubnetIds": self.vpc_public_subnet_ids,
        }
        if not self.internet_facing:
            given = [key for key, value in internet_only.items() if value]
            if given:
                raise ConfigError(
                    f"{', '.join(given)} describe the internet-facing load balancer: set "
                    "internetFacing=true too, or leave them out"
                )
            return
        if self.internet_domain_name is None:
            raise ConfigError(
                "internetFacing=true needs internetDomainName: the name builds outside the VPC "
                "use (its certificate is internetCertificateArn, or certificateArn)"
            )
        if self.internet_domain_name == self.domain_name:
            raise ConfigError(
                f"internetDomainName={self.internet_domain_name!r} is domainName too: the two "
                "load balancers need a name each"
            )
        if self.client_ca_bundle_file is None:
            raise ConfigError(
                "internetFacing=true needs clientCaBundleFile: the PEM bundle of the CA that "
                "issues the builds' client certificates (see docs/codebuild.md); without it "
                "anyone could pull through the account"
            )
        cas = ca_certificates("clientCaBundleFile", self.client_ca_bundle_file)
        if self.client_revocation_list_file is not None:
            revoked_serials("clientRevocationListFile", self.client_revocation_list_file, cas)
        if self.vpc_id is not None and len(self.vpc_public_subnet_ids) != len(
            self.vpc_availability_zones
        ):
            raise ConfigError(
                "with vpcId and internetFacing=true, vpcPublicSubnetIds needs one public subnet "
                "per zone in vpcAvailabilityZones, in the same order"
            )

    def _validate_image(self) -> None:
        if self.image_uri is not None and self.image_from_asset:
            raise ConfigError("imageUri and imageFromAsset exclude each other: pick one")
        if self.image_uri is not None:
            last = self.image_uri.rsplit("/", 1)[-1]
            if not _PINNED_URI.search(last) or last.endswith(":latest"):
                raise ConfigError(
                    f"imageUri={self.image_uri!r}: name a fixed tag or a digest "
                    "(REGISTRY/NAME:1.2.3 or REGISTRY/NAME@sha256:...), not latest"
                )
        if self.image_tag == "latest":
            raise ConfigError(
                "imageTag=latest: a moving tag means each new task may run another build; "
                "give the tag you pushed (the repository is tag-immutable) or imageDigest"
            )
        if self.image_digest is not None and self.image_tag is not None:
            raise ConfigError("imageTag and imageDigest exclude each other: give one")
        if not self.uses_image_repository and (self.image_tag or self.image_digest):
            raise ConfigError(
                "imageTag and imageDigest name an image in imageRepositoryName; with imageUri or "
                "imageFromAsset leave them out"
            )

    def _validate_extra_environment(self, sizes: ProxySizes) -> None:
        for name in self.extra_environment:
            if not name.startswith("PROXY_"):
                raise ConfigError(f"extraEnvironment: {name!r} is not a PROXY_ setting")
            if name.endswith(("_USERNAME", "_PASSWORD")) or name == "PROXY_AUTH_TOKENS":
                raise ConfigError(
                    f"extraEnvironment: {name} is a credential; credentials come from Secrets "
                    "Manager as ECS secrets, never from plain environment"
                )
        fetches = self.extra_environment.get("PROXY_MAX_UPSTREAM_FETCHES")
        if fetches is not None:
            fitting = fetches_fitting_memory(self.memory_mib)
            if not fetches.isdigit() or not 1 <= int(fetches) <= fitting:
                raise ConfigError(
                    f"extraEnvironment: PROXY_MAX_UPSTREAM_FETCHES={fetches} does not fit "
                    f"memoryMiB={self.memory_mib} (1 to {fitting}; the stack derives "
                    f"{sizes.max_upstream_fetches} when it is left out)"
                )

    # ------------------------------------------------------------------ the rows

    @classmethod
    def rows(cls) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
        """Every setting with the field it fills, in declaration order."""
        for item in dataclasses.fields(cls):
            row = item.metadata.get("setting")
            if isinstance(row, Setting):
                yield item, row

    def settings(self) -> Iterator[tuple[Setting, Any]]:
        """Every setting with its value in this configuration."""
        for item, row in self.rows():
            yield row, getattr(self, item.name)

    @classmethod
    def from_context(cls, get: ContextGetter) -> ProxyStackConfig:
        """Read every setting through ``get`` (``app.node.try_get_context``); a key that is
        missing or blank keeps the row's default."""
        values: dict[str, Any] = {}
        for item, row in cls.rows():
            raw = get(row.key)
            if not _blank(raw):
                values[item.name] = row.parse(row.key, raw)
        return cls(**values)


def settings_table() -> str:
    """The README's settings table, made from the rows."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    defaults = ProxyStackConfig()
    for row, value in defaults.settings():
        lines.append(f"| `{row.key}` | {row.shown or _shown(value)} | {row.help} |")
    return "\n".join(lines)


def _shown(value: object) -> str:
    if value is None or value == () or value == {}:
        return NONE_SHOWN
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def infra_path(name: str) -> Path:
    """A file setting's path: relative to infra/ (where cdk.json is), or absolute."""
    return INFRA_DIR / name


def read_pem(key: str, name: str, label: str, what: str) -> list[str]:
    """The PEM blocks labelled ``label`` in the file ``name``; refuses a file with anything else
    in it, a private key above all (a CA's key must never leave its owner's machine)."""
    path = infra_path(name)
    try:
        content = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}={name!r}: cannot read {path} ({exc})") from None
    labels = re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----", content)
    if any("PRIVATE KEY" in found for found in labels):
        raise ConfigError(
            f"{key}={name!r} holds a private key: it must hold {what} only; keep the key out "
            "of the repository and of the stack"
        )
    blocks = re.findall(
        rf"-----BEGIN {label}-----\r?\n[A-Za-z0-9+/=\r\n]+-----END {label}-----", content
    )
    if not blocks or len(blocks) != len(labels):
        raise ConfigError(f"{key}={name!r}: expected {what}, found {labels or 'no PEM block'}")
    return blocks


def ca_certificates(key: str, name: str) -> list[x509.Certificate]:
    """The CA certificates of the trust store's bundle ``name`` (PEM certificates only)."""
    blocks = read_pem(
        key,
        name,
        "CERTIFICATE",
        "the CA certificates (PEM) that issue the builds' client certificates",
    )
    try:
        return [x509.load_pem_x509_certificate(block.encode("ascii")) for block in blocks]
    except ValueError as exc:
        raise ConfigError(f"{key}={name!r}: a certificate cannot be read ({exc})") from None


def revoked_serials(key: str, name: str, cas: list[x509.Certificate]) -> tuple[int, ...]:
    """The serials revoked by the PEM revocation list(s) in ``name``, each list checked to be
    signed by one of ``cas``: the load balancer would refuse another CA's list, but only at
    deploy time, after the stack has started to change."""
    blocks = read_pem(
        key,
        name,
        "X509 CRL",
        "a certificate revocation list in PEM (registry-proxy certs writes one)",
    )
    serials: list[int] = []
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block.encode("ascii"))
        except ValueError as exc:
            raise ConfigError(
                f"{key}={name!r}: the revocation list cannot be read ({exc})"
            ) from None
        if not any(_signed_by(crl, ca) for ca in cas):
            raise ConfigError(
                f"{key}={name!r}: the revocation list of {crl.issuer.rfc4514_string()!r} is not "
                "signed by a CA of clientCaBundleFile; publish the list of the CA that issues "
                "the builds' certificates (registry-proxy certs renew-crl)"
            )
        serials += [entry.serial_number for entry in crl]
    return tuple(serials)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    ):
        return False
    return crl.is_signature_valid(key)


def _step(values: tuple[int, ...]) -> int:
    return values[1] - values[0] if len(values) > 1 else values[0]
