"""Deployment settings, read from CDK context and validated before anything is synthesized.

Every setting is a context key: defaults live in ``cdk.json`` and are overridden on the command
line with ``cdk synth -c key=value``.  Values given with ``-c`` arrive as strings, values from
``cdk.json`` keep their JSON type; both are accepted.  Nothing here talks to AWS: the stack must
synthesize offline, so an existing VPC is described by its ids rather than looked up.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from registry_proxy_infra.sizing import (
    ProxySizes,
    SizingError,
    derive_sizes,
    fetches_fitting_memory,
)

ContextGetter = Callable[[str], Any]

DOCKER_HUB_URL = "https://registry-1.docker.io"

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

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$")
# A complete secret ARN ends in the six characters Secrets Manager appends to the name.
_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+-[A-Za-z0-9]{6}$"
)
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

    region: str | None = None
    stack_name: str = "RegistryProxy"
    # network
    vpc_cidr: str = "10.80.0.0/16"
    max_azs: int = 2
    nat_gateways: int = 2
    existing_vpc: ExistingVpc | None = None
    allowed_cidrs: tuple[str, ...] = ()
    allowed_security_group_ids: tuple[str, ...] = ()
    # TLS and naming
    certificate_arn: str | None = None
    domain_name: str | None = None
    hosted_zone_id: str | None = None
    hosted_zone_name: str | None = None
    # image
    image_uri: str | None = None
    image_from_asset: bool = False
    image_repository_name: str = "registry-proxy"
    image_tag: str | None = None
    image_digest: str | None = None
    # credentials
    docker_hub_secret_arn: str | None = None
    # cache bucket and logs
    cache_prefix: str = "cache"
    # Days without a pull after which cache entries are deleted (PROXY_CACHE_EXPIRE_UNUSED).
    cache_expiration_days: int | None = None
    access_log_retention_days: int = 90
    log_retention_days: int = 30
    # operations
    alarm_emails: tuple[str, ...] = ()
    alarm_https_endpoints: tuple[str, ...] = ()
    operator_cidrs: tuple[str, ...] = ()
    container_insights: bool = True
    ecs_exec: bool = False
    # service size and scaling
    min_tasks: int = 2
    max_tasks: int = 6
    cpu_target_percent: int = 60
    cpu: int = 1024
    memory_mib: int = 2048
    ephemeral_storage_gib: int = 40
    spool_per_fetch_mib: int = 1024
    # load balancer and draining
    idle_timeout_seconds: int = 900
    deregistration_delay_seconds: int = 300
    shutdown_grace_seconds: int = 100
    # proxy settings passed as environment
    upstream_url: str = DOCKER_HUB_URL
    tag_ttl_seconds: int = 300
    blob_redirect: bool = False
    log_level: str = "info"
    extra_environment: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived values

    @property
    def uses_existing_vpc(self) -> bool:
        return self.existing_vpc is not None

    @property
    def uses_image_repository(self) -> bool:
        """The image comes from the ECR repository by tag or digest (not a URI, not an asset)."""
        return self.image_uri is None and not self.image_from_asset

    @property
    def image_missing(self) -> bool:
        """No image to run was named: a deployment must say exactly which build it runs."""
        return self.uses_image_repository and self.image_tag is None and self.image_digest is None

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
        if self.region is not None and not _REGION.match(self.region):
            raise ConfigError(f"region={self.region!r}: expected an AWS region such as eu-west-1")
        if not _STACK_NAME.match(self.stack_name):
            raise ConfigError(f"stackName={self.stack_name!r}: expected letters, digits and -")
        _check_cidr("vpcCidr", self.vpc_cidr)
        _check_range("maxAzs", self.max_azs, 2, 6)
        _check_range("natGateways", self.nat_gateways, 1, self.max_azs)
        for cidr in self.allowed_cidrs:
            network = _check_cidr("allowedCidrs", cidr)
            if network.prefixlen == 0:
                raise ConfigError(
                    f"allowedCidrs: {cidr!r} lets in every address; list the CodeBuild "
                    "networks instead"
                )
        for group in self.allowed_security_group_ids:
            _check_pattern("allowedSecurityGroupIds", group, _SECURITY_GROUP_ID, "sg-0123abcd")
        if self.existing_vpc is not None:
            _check_existing_vpc(self.existing_vpc)
            if not (
                self.allowed_cidrs or self.allowed_security_group_ids or self.existing_vpc.cidr
            ):
                raise ConfigError(
                    "with vpcId, give allowedCidrs or allowedSecurityGroupIds (or vpcCidr to "
                    "allow the whole VPC): nothing could reach the proxy otherwise"
                )
        if self.certificate_arn is not None:
            _check_pattern(
                "certificateArn",
                self.certificate_arn,
                _CERTIFICATE_ARN,
                "arn:aws:acm:REGION:ACCOUNT:certificate/ID",
            )
        if self.domain_name is not None:
            _check_pattern("domainName", self.domain_name, _DNS_NAME, "registry.example.com")
        if (self.hosted_zone_id is None) != (self.hosted_zone_name is None):
            raise ConfigError("hostedZoneId and hostedZoneName go together: give both or neither")
        if self.hosted_zone_id is not None:
            _check_pattern("hostedZoneId", self.hosted_zone_id, _HOSTED_ZONE_ID, "Z0123456789AB")
            assert self.hosted_zone_name is not None
            zone = self.hosted_zone_name.rstrip(".")
            _check_pattern("hostedZoneName", zone, _DNS_NAME, "example.com")
            if self.domain_name is None:
                raise ConfigError("hostedZoneId needs domainName: the record to create in it")
            if not (self.domain_name == zone or self.domain_name.endswith("." + zone)):
                raise ConfigError(
                    f"domainName={self.domain_name!r} is not inside hostedZoneName={zone!r}"
                )
        if self.image_uri is not None and self.image_from_asset:
            raise ConfigError("imageUri and imageFromAsset exclude each other: pick one")
        if self.image_uri is not None:
            _check_pattern("imageUri", self.image_uri, _IMAGE_URI, "REGISTRY/NAME:TAG")
            last = self.image_uri.rsplit("/", 1)[-1]
            if not _PINNED_URI.search(last) or last.endswith(":latest"):
                raise ConfigError(
                    f"imageUri={self.image_uri!r}: name a fixed tag or a digest "
                    "(REGISTRY/NAME:1.2.3 or REGISTRY/NAME@sha256:...), not latest"
                )
        _check_pattern(
            "imageRepositoryName", self.image_repository_name, _REPOSITORY_NAME, "registry-proxy"
        )
        if self.image_tag is not None:
            _check_pattern("imageTag", self.image_tag, _IMAGE_TAG, "v1.2.3")
            if self.image_tag == "latest":
                raise ConfigError(
                    "imageTag=latest: a moving tag means each new task may run another build; "
                    "give the tag you pushed (the repository is tag-immutable) or imageDigest"
                )
        if self.image_digest is not None:
            _check_pattern("imageDigest", self.image_digest, _IMAGE_DIGEST, "sha256:0123...")
            if self.image_tag is not None:
                raise ConfigError("imageTag and imageDigest exclude each other: give one")
        if not self.uses_image_repository and (self.image_tag or self.image_digest):
            raise ConfigError(
                "imageTag and imageDigest name an image in imageRepositoryName; with imageUri or "
                "imageFromAsset leave them out"
            )
        for email in self.alarm_emails:
            _check_pattern("alarmEmails", email, _EMAIL, "ops@example.com")
        for endpoint in self.alarm_https_endpoints:
            if not endpoint.startswith("https://") or len(endpoint) <= len("https://"):
                raise ConfigError(f"alarmHttpsEndpoints: {endpoint!r} is not an https:// URL")
        for cidr in self.operator_cidrs:
            _check_cidr("operatorCidrs", cidr)
        if self.docker_hub_secret_arn is not None:
            _check_pattern(
                "dockerHubSecretArn",
                self.docker_hub_secret_arn,
                _SECRET_ARN,
                "arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf",
            )
        _check_pattern("cachePrefix", self.cache_prefix, _PREFIX, "cache")
        if self.cache_expiration_days is not None:
            _check_range("cacheExpirationDays", self.cache_expiration_days, 1, 3650)
        _check_range("accessLogRetentionDays", self.access_log_retention_days, 1, 3650)
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ConfigError(
                f"logRetentionDays={self.log_retention_days}: CloudWatch Logs accepts only "
                f"{', '.join(map(str, LOG_RETENTION_DAYS))}"
            )
        _check_range("minTasks", self.min_tasks, 2, 100)
        _check_range("maxTasks", self.max_tasks, self.min_tasks, 100)
        _check_range("cpuTargetPercent", self.cpu_target_percent, 10, 90)
        if self.cpu not in FARGATE_MEMORY:
            raise ConfigError(
                f"cpu={self.cpu}: Fargate accepts {', '.join(map(str, FARGATE_MEMORY))}"
            )
        if self.memory_mib not in FARGATE_MEMORY[self.cpu]:
            allowed = FARGATE_MEMORY[self.cpu]
            raise ConfigError(
                f"memoryMiB={self.memory_mib} does not fit cpu={self.cpu}: Fargate accepts "
                f"{allowed[0]} to {allowed[-1]} in steps of {_step(allowed)}"
            )
        _check_range("ephemeralStorageGiB", self.ephemeral_storage_gib, 21, 200)
        _check_range("spoolPerFetchMiB", self.spool_per_fetch_mib, 16, 64 * 1024)
        try:
            sizes = self.sizes
        except SizingError as exc:
            raise ConfigError(str(exc)) from None
        _check_range("idleTimeoutSeconds", self.idle_timeout_seconds, 60, 4000)
        _check_range("deregistrationDelaySeconds", self.deregistration_delay_seconds, 0, 3600)
        _check_range(
            "shutdownGraceSeconds",
            self.shutdown_grace_seconds,
            1,
            MAX_FARGATE_STOP_TIMEOUT - STOP_TIMEOUT_MARGIN,
        )
        if not self.upstream_url.startswith("https://"):
            raise ConfigError(f"upstreamUrl={self.upstream_url!r}: expected an https:// URL")
        _check_range("tagTtlSeconds", self.tag_ttl_seconds, 0, 7 * 24 * 3600)
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"logLevel={self.log_level!r}: expected debug, info, warning or error"
            )
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

    # ------------------------------------------------------------------ reading context

    @classmethod
    def from_context(
        cls, get: ContextGetter, *, default_region: str | None = None
    ) -> ProxyStackConfig:
        """Read every setting through ``get`` (``app.node.try_get_context``)."""
        ctx = _Context(get)
        existing: ExistingVpc | None = None
        vpc_id = ctx.string("vpcId")
        if vpc_id is not None:
            existing = ExistingVpc(
                vpc_id=vpc_id,
                availability_zones=ctx.strings("vpcAvailabilityZones"),
                private_subnet_ids=ctx.strings("vpcPrivateSubnetIds"),
                private_subnet_route_table_ids=ctx.strings("vpcPrivateSubnetRouteTableIds"),
                cidr=ctx.string("vpcCidr"),
                create_s3_endpoint=ctx.boolean("createS3GatewayEndpoint", True),
            )
        defaults = _DEFAULTS
        expiration = ctx.integer("cacheExpirationDays", 0)
        return cls(
            region=ctx.string("region") or default_region,
            stack_name=ctx.string("stackName") or defaults.stack_name,
            vpc_cidr=ctx.string("vpcCidr") or defaults.vpc_cidr,
            max_azs=ctx.integer("maxAzs", defaults.max_azs),
            nat_gateways=ctx.integer("natGateways", defaults.nat_gateways),
            existing_vpc=existing,
            allowed_cidrs=ctx.strings("allowedCidrs"),
            allowed_security_group_ids=ctx.strings("allowedSecurityGroupIds"),
            certificate_arn=ctx.string("certificateArn"),
            domain_name=_lower(ctx.string("domainName")),
            hosted_zone_id=ctx.string("hostedZoneId"),
            hosted_zone_name=_lower(ctx.string("hostedZoneName")),
            image_uri=ctx.string("imageUri"),
            image_from_asset=ctx.boolean("imageFromAsset", False),
            image_repository_name=ctx.string("imageRepositoryName")
            or defaults.image_repository_name,
            image_tag=ctx.string("imageTag"),
            image_digest=ctx.string("imageDigest"),
            docker_hub_secret_arn=ctx.string("dockerHubSecretArn"),
            alarm_emails=ctx.strings("alarmEmails"),
            alarm_https_endpoints=ctx.strings("alarmHttpsEndpoints"),
            operator_cidrs=ctx.strings("operatorCidrs"),
            container_insights=ctx.boolean("containerInsights", defaults.container_insights),
            ecs_exec=ctx.boolean("ecsExec", defaults.ecs_exec),
            cache_prefix=(ctx.string("cachePrefix") or defaults.cache_prefix).strip("/"),
            cache_expiration_days=expiration or None,
            access_log_retention_days=ctx.integer(
                "accessLogRetentionDays", defaults.access_log_retention_days
            ),
            log_retention_days=ctx.integer("logRetentionDays", defaults.log_retention_days),
            min_tasks=ctx.integer("minTasks", defaults.min_tasks),
            max_tasks=ctx.integer("maxTasks", defaults.max_tasks),
            cpu_target_percent=ctx.integer("cpuTargetPercent", defaults.cpu_target_percent),
            cpu=ctx.integer("cpu", defaults.cpu),
            memory_mib=ctx.integer("memoryMiB", defaults.memory_mib),
            ephemeral_storage_gib=ctx.integer(
                "ephemeralStorageGiB", defaults.ephemeral_storage_gib
            ),
            spool_per_fetch_mib=ctx.integer("spoolPerFetchMiB", defaults.spool_per_fetch_mib),
            idle_timeout_seconds=ctx.integer("idleTimeoutSeconds", defaults.idle_timeout_seconds),
            deregistration_delay_seconds=ctx.integer(
                "deregistrationDelaySeconds", defaults.deregistration_delay_seconds
            ),
            shutdown_grace_seconds=ctx.integer(
                "shutdownGraceSeconds", defaults.shutdown_grace_seconds
            ),
            upstream_url=(ctx.string("upstreamUrl") or defaults.upstream_url).rstrip("/"),
            tag_ttl_seconds=ctx.integer("tagTtlSeconds", defaults.tag_ttl_seconds),
            blob_redirect=ctx.boolean("blobRedirect", defaults.blob_redirect),
            log_level=(ctx.string("logLevel") or defaults.log_level).lower(),
            extra_environment=ctx.mapping("extraEnvironment"),
        )


# ---------------------------------------------------------------------- helpers


class _Context:
    """Typed access to context values that may be JSON values or command-line strings."""

    def __init__(self, get: ContextGetter) -> None:
        self._get = get

    def string(self, key: str) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        text = str(value).strip()
        return text or None

    def integer(self, key: str, default: int) -> int:
        value = self._get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")

    def strings(self, key: str) -> tuple[str, ...]:
        """A list: a JSON array, or a comma-separated string from ``-c key=a,b``."""
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = _json(key, text)
            else:
                return tuple(part.strip() for part in text.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(item.strip() for item in value if item.strip())
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")

    def mapping(self, key: str) -> dict[str, str]:
        value = self._get(key)
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            value = _json(key, value)
        if isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            return {k: str(v) for k, v in value.items()}
        raise ConfigError(f"{key}: expected an object of strings, got {value!r}")


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key}: not valid JSON ({exc.msg})") from None


def _lower(value: str | None) -> str | None:
    return value.lower().rstrip(".") if value is not None else None


def _check_cidr(key: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{key}: {value!r} is not an IPv4 CIDR block ({exc})") from None


def _check_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}={value}: expected a number from {low} to {high}")


def _check_pattern(key: str, value: str, pattern: re.Pattern[str], example: str) -> None:
    if not pattern.match(value):
        raise ConfigError(f"{key}={value!r}: expected something like {example}")


def _check_existing_vpc(vpc: ExistingVpc) -> None:
    _check_pattern("vpcId", vpc.vpc_id, _VPC_ID, "vpc-0123456789abcdef0")
    count = len(vpc.availability_zones)
    if count < 2:
        raise ConfigError("vpcAvailabilityZones: the load balancer needs at least two zones")
    for zone in vpc.availability_zones:
        _check_pattern("vpcAvailabilityZones", zone, _AZ, "eu-west-1a")
    if len(vpc.private_subnet_ids) != count or len(vpc.private_subnet_route_table_ids) != count:
        raise ConfigError(
            "vpcPrivateSubnetIds and vpcPrivateSubnetRouteTableIds need one entry per zone in "
            "vpcAvailabilityZones, in the same order"
        )
    for subnet in vpc.private_subnet_ids:
        _check_pattern("vpcPrivateSubnetIds", subnet, _SUBNET_ID, "subnet-0123456789abcdef0")
    for table in vpc.private_subnet_route_table_ids:
        _check_pattern(
            "vpcPrivateSubnetRouteTableIds", table, _ROUTE_TABLE_ID, "rtb-0123456789abcdef0"
        )
    if vpc.cidr is not None:
        _check_cidr("vpcCidr", vpc.cidr)


def _step(values: tuple[int, ...]) -> int:
    return values[1] - values[0] if len(values) > 1 else values[0]


_DEFAULTS = ProxyStackConfig()
