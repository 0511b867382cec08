"""Settings, read once from the environment (and command-line overrides) and validated.

Nothing reads the environment at import time: ``load_settings(env)`` builds a frozen ``Settings``
and raises ``ConfigError`` with one line naming the variable and what it accepts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, urlsplit

from proxy.http.access import Network, load_htpasswd, load_tokens, parse_networks
from proxy.registry.policy import (
    RepositoryRules,
    TagTtlRule,
    parse_repository_patterns,
    parse_tag_ttl_rules,
)

T = TypeVar("T")

DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_HOST = "docker.io"
# Names clients use for Docker Hub (in image references, ``ns=`` and path prefixes).
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB_HOST, "registry-1.docker.io", "index.docker.io"})


class ConfigError(Exception):
    """A setting has a value the proxy cannot use; the message names the variable."""


@dataclass(frozen=True, slots=True)
class StorageLocation:
    """Where the cache lives: a local directory, or an S3 bucket and key prefix."""

    path: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def __str__(self) -> str:
        if self.bucket is not None:
            return f"s3://{self.bucket}/{self.prefix}"
        return str(self.path)


@dataclass(frozen=True, slots=True)
class CacheLimit:
    """How big the cache may grow; any combination of the three, the smallest wins.

    The fractions are of the filesystem the cache directory is on (so they apply only to a
    directory, never to S3).
    """

    max_bytes: int | None = None
    max_fraction: float | None = None
    min_free_fraction: float | None = None


#: The default for a cache directory: grow while at least 10% of its disk stays free.
DIRECTORY_DEFAULT_LIMIT = CacheLimit(min_free_fraction=0.10)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """One upstream registry: the host clients name it by, its URL and its account."""

    host: str
    url: str
    username: str | None = None
    password: str = field(default="", repr=False)
    repository_rules: RepositoryRules = field(default_factory=RepositoryRules)


@dataclass(frozen=True, slots=True)
class Settings:
    listen_host: str = "0.0.0.0"
    listen_port: int = 5000
    upstream: UpstreamSettings = field(
        default_factory=lambda: UpstreamSettings(DOCKER_HUB_HOST, DOCKER_HUB_URL)
    )
    extra_upstreams: tuple[UpstreamSettings, ...] = ()
    storage: StorageLocation = field(default_factory=lambda: StorageLocation(Path("./cache")))
    s3_endpoint_url: str | None = None
    blob_redirect: bool = False
    log_format: str = "console"
    log_level: str = "info"
    tag_ttl: float = 300.0
    tag_ttl_rules: tuple[TagTtlRule, ...] = ()
    negative_ttl: float = 30.0
    keep_deleted_tags: bool = False
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 30.0
    max_manifest_bytes: int = 4 * 1024 * 1024
    shutdown_grace: float = 30.0
    spool_dir: Path | None = None
    quota_warn_remaining: int = 10
    max_upstream_fetches: int = 64
    prefetch: bool = True
    fetch_pieces: int = 4
    fetch_piece_threshold: int = 16 * 1024 * 1024
    client_idle_timeout: float = 75.0
    max_clients: int = 1024
    allow_cidrs: tuple[Network, ...] = ()
    anonymous_cidrs: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    trusted_hops: int = 1
    operator_cidrs: tuple[Network, ...] = ()
    spool_max_size: int | None = None
    spool_min_free: int = 1024**3
    memory_limit: int | None = None
    cloudwatch_namespace: str | None = None
    cloudwatch_interval: float = 60.0
    htpasswd_users: dict[str, bytes] = field(default_factory=dict, repr=False)
    auth_tokens: frozenset[str] = field(default=frozenset(), repr=False)
    cache_limit: CacheLimit | None = DIRECTORY_DEFAULT_LIMIT
    cache_expire_unused: float | None = None
    cache_sweep_interval: float = 3600.0
    cache_record_access: bool = True


# --- value parsers: each raises ValueError with what is accepted --------------------------------


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:5000")
    return host.strip("[]"), _port(port)


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError("expected a port number from 1 to 65535")
    return int(value)


def _http_url(value: str, example: str) -> SplitResult:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, e.g. {example}")
    return parts


def _url(value: str) -> str:
    """A registry base URL, normalised to scheme://host[:port]."""
    parts = _http_url(value, "https://registry-1.docker.io")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError("expected a registry base URL without path, e.g. https://ghcr.io")
    return f"{parts.scheme}://{parts.netloc}"


def _storage(value: str) -> StorageLocation:
    if value.startswith("s3://"):
        bucket, _, prefix = value[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError("expected s3://BUCKET/PREFIX or a directory path")
        return StorageLocation(bucket=bucket, prefix=prefix.strip("/"))
    if "://" in value:
        raise ValueError("expected a directory path or s3://BUCKET/PREFIX")
    return StorageLocation(path=Path(value).expanduser())


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return value.lower()

    return parse


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds, e.g. 300") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("expected a number of seconds >= 0")
    return seconds


def _positive_seconds(value: str) -> float:
    seconds = _seconds(value)
    if seconds == 0:
        raise ValueError("expected a number of seconds > 0")
    return seconds


def _size(value: str) -> int:
    units = {"": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
    units |= {"g": 1024**3, "gib": 1024**3}
    number = value.rstrip("KkMmGgIiBb")
    unit = value[len(number) :].lower()
    if not number.isdigit() or unit not in units or int(number) == 0:
        raise ValueError("expected a size in bytes, e.g. 4194304, 4MiB or 2GiB")
    return int(number) * units[unit]


_BINARY_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def _cache_size(value: str) -> CacheLimit | None:
    """``50GiB`` (also 50G, 500MiB, bytes), ``80%`` of the disk, or ``off``."""
    lowered = value.lower().replace(" ", "")
    if lowered in ("off", "none", "unlimited"):
        return None
    expected = "expected a size (e.g. 50GiB, 500MiB), a percentage of the disk (e.g. 80%) or off"
    if lowered.endswith("%"):
        try:
            percent = float(lowered[:-1])
        except ValueError:
            raise ValueError(expected) from None
        if not 0 < percent <= 100:
            raise ValueError("expected a percentage above 0 and at most 100")
        return CacheLimit(max_fraction=percent / 100)
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(?:([kmgt])(?:i?b)?|b)?", lowered)
    if match is None:
        raise ValueError(expected)
    size = int(float(match.group(1)) * 1024 ** _BINARY_UNITS[match.group(2) or ""])
    if size <= 0:
        raise ValueError(expected)
    return CacheLimit(max_bytes=size)


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration_or_off(value: str) -> float | None:
    """``30d``, ``12h``, ``90m``, ``3600`` (seconds), or ``off``."""
    lowered = value.lower().replace(" ", "")
    if lowered in ("off", "none", "never"):
        return None
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)", lowered)
    if match is None or float(match.group(1)) == 0:
        raise ValueError("expected a duration such as 30d, 12h, 90m or 3600 (seconds), or off")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _positive_duration(value: str) -> float:
    duration = _duration_or_off(value)
    if duration is None:
        raise ValueError("expected a duration such as 1h, 30m or 600 (seconds)")
    return duration


def _htpasswd(value: str) -> dict[str, bytes]:
    try:
        users = load_htpasswd(Path(value))
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror}") from None
    if not users:
        raise ValueError("the file has no users (create them with: htpasswd -B FILE USER)")
    return users


def _count(value: str) -> int:
    if not value.isdigit():
        raise ValueError("expected a whole number >= 0")
    return int(value)


def _positive_count(value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise ValueError("expected a whole number >= 1")
    return int(value)


def _piece_count(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 16:
        raise ValueError("expected a whole number from 1 (no pieces) to 16")
    return int(value)


def _namespace(value: str) -> str:
    # CloudWatch's rule for namespaces; AWS/ is reserved for AWS's own.
    if not re.fullmatch(r"[A-Za-z0-9.\-_/#:]{1,255}", value) or value.startswith("AWS/"):
        raise ValueError("expected a CloudWatch namespace such as RegistryProxy (not AWS/...)")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("expected a non-empty value")
    return value


# Every variable the proxy reads, with what it accepts. Used for validation and for checking
# deployment files (docker-compose, CDK) against what the proxy really understands.
ENV_VARS: dict[str, str] = {
    "PROXY_LISTEN": "HOST:PORT to listen on (default 0.0.0.0:5000)",
    "PROXY_UPSTREAM_URL": "upstream registry URL (default https://registry-1.docker.io)",
    "PROXY_UPSTREAM_USERNAME": "upstream account name (anonymous when unset)",
    "PROXY_UPSTREAM_PASSWORD": "upstream password or access token",
    "PROXY_STORAGE": "cache directory, or s3://BUCKET/PREFIX (default ./cache)",
    "PROXY_S3_ENDPOINT_URL": "S3-compatible endpoint URL (default: AWS)",
    "PROXY_BLOB_REDIRECT": "true: answer cached blob GETs with a 307 to a presigned S3 URL",
    "PROXY_LOG_FORMAT": "json or console (default console)",
    "PROXY_LOG_LEVEL": "debug, info, warning or error (default info)",
    "PROXY_TAG_TTL": "seconds a tag is served without asking the upstream (default 300)",
    "PROXY_UPSTREAM_CONNECT_TIMEOUT": "seconds to connect to the upstream (default 10)",
    "PROXY_UPSTREAM_READ_TIMEOUT": "seconds of upstream silence before giving up (default 30)",
    "PROXY_MAX_MANIFEST_SIZE": "largest manifest accepted from the upstream (default 4MiB)",
    "PROXY_SHUTDOWN_GRACE": "seconds to finish in-flight requests on SIGTERM (default 30)",
    "PROXY_SPOOL_DIR": "directory for in-flight downloads (default: inside the cache or /tmp)",
    "PROXY_EXTRA_UPSTREAMS": "more registries, as HOST or HOST=URL, comma-separated "
    "(e.g. ghcr.io,quay.io); reached as /v2/HOST/REPO or with ?ns=HOST",
    "PROXY_UPSTREAM_<HOST>_USERNAME": "account for an extra upstream; HOST upper-cased, "
    "dots and dashes as _ (e.g. PROXY_UPSTREAM_GHCR_IO_USERNAME)",
    "PROXY_UPSTREAM_<HOST>_PASSWORD": "its password or token",
    "PROXY_ALLOW_REPOSITORIES": "Docker Hub repositories that may be pulled, comma-separated "
    "globs (e.g. library/*,myorg/*); default: all",
    "PROXY_DENY_REPOSITORIES": "Docker Hub repositories that may not be pulled (deny wins)",
    "PROXY_UPSTREAM_<HOST>_ALLOW_REPOSITORIES": "the same for an extra upstream "
    "(e.g. PROXY_UPSTREAM_GHCR_IO_ALLOW_REPOSITORIES)",
    "PROXY_UPSTREAM_<HOST>_DENY_REPOSITORIES": "the same for an extra upstream",
    "PROXY_TAG_TTL_RULES": "TTL per tag pattern, REPOSITORY:TAG=SECONDS comma-separated, first "
    "match wins (e.g. *:latest=60,library/*:[0-9]*=86400); PROXY_TAG_TTL otherwise",
    "PROXY_NEGATIVE_TTL": "seconds an upstream 404 for a tag or manifest is remembered "
    "(default 30)",
    "PROXY_KEEP_DELETED_TAGS": "true: keep serving a tag deleted upstream, with a Warning",
    "PROXY_ALLOW_CIDRS": "client networks allowed to connect, comma-separated CIDRs (default: all)",
    "PROXY_TRUSTED_PROXIES": "load balancer networks whose X-Forwarded-For is trusted",
    "PROXY_TRUSTED_HOPS": "proxies in front that append to X-Forwarded-For: the client is that "
    "many entries from its right (default 1, one load balancer)",
    "PROXY_OPERATOR_CIDRS": "networks that may read /metrics and /status without a login "
    "(default: unrestricted)",
    "PROXY_SPOOL_MAX_SIZE": "most disk the spool may take; new upstream fetches stream through "
    "memory beyond it (default: limited by free space only)",
    "PROXY_SPOOL_MIN_FREE": "free space kept on the spool's filesystem; new upstream fetches "
    "stream through memory below it (default 1GiB)",
    "PROXY_MEMORY_LIMIT": "memory the proxy may use (the container's): start-up refuses "
    "PROXY_MAX_UPSTREAM_FETCHES that cannot fit (default: not checked)",
    "PROXY_CLOUDWATCH_NAMESPACE": "write CloudWatch embedded-metric-format lines in this "
    "namespace (default: none)",
    "PROXY_CLOUDWATCH_INTERVAL": "seconds between embedded-metric-format lines (default 60)",
    "PROXY_AUTH_HTPASSWD": "htpasswd file with bcrypt entries: clients must log in",
    "PROXY_AUTH_TOKENS": "comma-separated static tokens accepted as Bearer or as Basic password",
    "PROXY_ANONYMOUS_CIDRS": "networks that need no login when auth is on (Docker mirror clients)",
    "PROXY_MAX_UPSTREAM_FETCHES": "blob downloads from upstreams at once; more wait (default 64)",
    "PROXY_PREFETCH": "true: when an image manifest is served, fetch its blobs before the client "
    "asks (default true)",
    "PROXY_FETCH_PIECES": "Range requests a big blob is fetched in at once; 1: one stream "
    "(default 4)",
    "PROXY_FETCH_PIECE_THRESHOLD": "blobs larger than this are fetched in pieces (default 16MiB)",
    "PROXY_CLIENT_IDLE_TIMEOUT": "seconds a client connection may move no byte: an idle "
    "keep-alive connection, or a transfer the client reads nothing of (default 75)",
    "PROXY_MAX_CLIENTS": "requests served at once; more get 503 with Retry-After (default 1024)",
    "PROXY_QUOTA_WARN_REMAINING": "log a warning when fewer upstream pulls remain (default 10)",
    "PROXY_CACHE_MAX_SIZE": "largest cache: a size (50GiB), a share of its disk (80%) or off "
    "(default: a directory keeps 10% of its disk free; S3 off)",
    "PROXY_CACHE_EXPIRE_UNUSED": "delete cache entries not served for this long, e.g. 30d "
    "(default off)",
    "PROXY_CACHE_SWEEP_INTERVAL": "how often the server sweeps the cache for expired entries "
    "(default 1h)",
    "PROXY_CACHE_RECORD_ACCESS": "false: do not record when entries are served (expiry and "
    "eviction then go by the time written; for measurements) (default true)",
}


class _Reader:
    """Reads prefixed variables from a mapping, collecting the first error with its name."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        assert name in ENV_VARS or name.startswith("PROXY_UPSTREAM_"), name
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``env`` (default: the process environment)."""
    read = _Reader(os.environ if env is None else env)
    defaults = Settings()
    host, port = read.get("PROXY_LISTEN", _listen, (defaults.listen_host, defaults.listen_port))
    username = read.get("PROXY_UPSTREAM_USERNAME", _non_empty, None)
    password = read.get("PROXY_UPSTREAM_PASSWORD", _non_empty, "")
    if username is not None and not password:
        raise ConfigError(
            "PROXY_UPSTREAM_PASSWORD is not set: it is required with PROXY_UPSTREAM_USERNAME "
            "(use a Docker Hub access token)"
        )
    if password and username is None:
        raise ConfigError("PROXY_UPSTREAM_USERNAME is not set: it is required with the password")
    upstream_url = read.get("PROXY_UPSTREAM_URL", _url, DOCKER_HUB_URL)
    storage = read.get("PROXY_STORAGE", _storage, defaults.storage)
    blob_redirect = read.get("PROXY_BLOB_REDIRECT", _bool, False)
    if blob_redirect and not storage.is_s3:
        raise ConfigError("PROXY_BLOB_REDIRECT=true needs PROXY_STORAGE=s3://BUCKET/PREFIX")
    spool = read.get("PROXY_SPOOL_DIR", _non_empty, None)
    default_limit = None if storage.is_s3 else DIRECTORY_DEFAULT_LIMIT
    cache_limit = read.get("PROXY_CACHE_MAX_SIZE", _cache_size, default_limit)
    if storage.is_s3 and cache_limit is not None and cache_limit.max_fraction is not None:
        raise ConfigError(
            "PROXY_CACHE_MAX_SIZE: a percentage of the disk needs a cache directory; "
            "give S3 a size such as 500GiB"
        )
    return Settings(
        listen_host=host,
        listen_port=port,
        upstream=UpstreamSettings(
            DOCKER_HUB_HOST,
            upstream_url,
            username,
            password,
            _repository_rules(read, "PROXY_ALLOW_REPOSITORIES", "PROXY_DENY_REPOSITORIES"),
        ),
        extra_upstreams=tuple(
            _extra_upstream(read, host, url)
            for host, url in read.get("PROXY_EXTRA_UPSTREAMS", _upstream_list, _NO_UPSTREAMS)
        ),
        storage=storage,
        s3_endpoint_url=read.get("PROXY_S3_ENDPOINT_URL", _url_any, None),
        blob_redirect=blob_redirect,
        log_format=read.get("PROXY_LOG_FORMAT", _choice("json", "console"), defaults.log_format),
        log_level=read.get(
            "PROXY_LOG_LEVEL", _choice("debug", "info", "warning", "error"), defaults.log_level
        ),
        tag_ttl=read.get("PROXY_TAG_TTL", _seconds, defaults.tag_ttl),
        tag_ttl_rules=read.get("PROXY_TAG_TTL_RULES", parse_tag_ttl_rules, ()),
        negative_ttl=read.get("PROXY_NEGATIVE_TTL", _seconds, defaults.negative_ttl),
        keep_deleted_tags=read.get("PROXY_KEEP_DELETED_TAGS", _bool, False),
        upstream_connect_timeout=read.get(
            "PROXY_UPSTREAM_CONNECT_TIMEOUT", _positive_seconds, defaults.upstream_connect_timeout
        ),
        upstream_read_timeout=read.get(
            "PROXY_UPSTREAM_READ_TIMEOUT", _positive_seconds, defaults.upstream_read_timeout
        ),
        max_manifest_bytes=read.get("PROXY_MAX_MANIFEST_SIZE", _size, defaults.max_manifest_bytes),
        shutdown_grace=read.get("PROXY_SHUTDOWN_GRACE", _seconds, defaults.shutdown_grace),
        spool_dir=Path(spool) if spool else None,
        allow_cidrs=read.get("PROXY_ALLOW_CIDRS", parse_networks, ()),
        anonymous_cidrs=read.get("PROXY_ANONYMOUS_CIDRS", parse_networks, ()),
        trusted_proxies=read.get("PROXY_TRUSTED_PROXIES", parse_networks, ()),
        trusted_hops=read.get("PROXY_TRUSTED_HOPS", _positive_count, defaults.trusted_hops),
        operator_cidrs=read.get("PROXY_OPERATOR_CIDRS", parse_networks, ()),
        spool_max_size=read.get("PROXY_SPOOL_MAX_SIZE", _size, None),
        spool_min_free=read.get("PROXY_SPOOL_MIN_FREE", _size, defaults.spool_min_free),
        memory_limit=read.get("PROXY_MEMORY_LIMIT", _size, None),
        cloudwatch_namespace=read.get("PROXY_CLOUDWATCH_NAMESPACE", _namespace, None),
        cloudwatch_interval=read.get(
            "PROXY_CLOUDWATCH_INTERVAL", _positive_seconds, defaults.cloudwatch_interval
        ),
        htpasswd_users=read.get("PROXY_AUTH_HTPASSWD", _htpasswd, {}),
        auth_tokens=read.get("PROXY_AUTH_TOKENS", load_tokens, frozenset()),
        max_upstream_fetches=read.get(
            "PROXY_MAX_UPSTREAM_FETCHES", _positive_count, defaults.max_upstream_fetches
        ),
        prefetch=read.get("PROXY_PREFETCH", _bool, defaults.prefetch),
        fetch_pieces=read.get("PROXY_FETCH_PIECES", _piece_count, defaults.fetch_pieces),
        fetch_piece_threshold=read.get(
            "PROXY_FETCH_PIECE_THRESHOLD", _size, defaults.fetch_piece_threshold
        ),
        client_idle_timeout=read.get(
            "PROXY_CLIENT_IDLE_TIMEOUT", _positive_seconds, defaults.client_idle_timeout
        ),
        max_clients=read.get("PROXY_MAX_CLIENTS", _positive_count, defaults.max_clients),
        quota_warn_remaining=read.get(
            "PROXY_QUOTA_WARN_REMAINING", _count, defaults.quota_warn_remaining
        ),
        cache_limit=cache_limit,
        cache_expire_unused=read.get("PROXY_CACHE_EXPIRE_UNUSED", _duration_or_off, None),
        cache_sweep_interval=read.get(
            "PROXY_CACHE_SWEEP_INTERVAL", _positive_duration, defaults.cache_sweep_interval
        ),
        cache_record_access=read.get("PROXY_CACHE_RECORD_ACCESS", _bool, True),
    )


_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")


_NO_UPSTREAMS: list[tuple[str, str]] = []


def _upstream_list(value: str) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, _, url = item.partition("=")
        host = host.strip().lower()
        if not _HOST_RE.fullmatch(host):
            raise ValueError(
                f"{host!r} is not a registry host name with a dot (e.g. ghcr.io); "
                "expected HOST or HOST=URL, comma-separated"
            )
        if host in DOCKER_HUB_ALIASES:
            raise ValueError("docker.io is the default upstream (PROXY_UPSTREAM_URL)")
        entries.append((host, _url(url.strip()) if url else f"https://{host}"))
    return entries


def credential_variable(host: str, part: str) -> str:
    """``PROXY_UPSTREAM_GHCR_IO_USERNAME`` for host ``ghcr.io`` and part ``USERNAME``.

    Every per-upstream setting is named this way (``..._ALLOW_REPOSITORIES`` too)."""
    return f"PROXY_UPSTREAM_{re.sub(r'[^A-Z0-9]', '_', host.upper())}_{part}"


def _extra_upstream(read: _Reader, host: str, url: str) -> UpstreamSettings:
    user_var = credential_variable(host, "USERNAME")
    password_var = credential_variable(host, "PASSWORD")
    username = read.get(user_var, _non_empty, None)
    password = read.get(password_var, _non_empty, "")
    if (username is None) != (not password):
        raise ConfigError(f"{user_var} and {password_var} must be set together")
    rules = _repository_rules(
        read,
        credential_variable(host, "ALLOW_REPOSITORIES"),
        credential_variable(host, "DENY_REPOSITORIES"),
    )
    return UpstreamSettings(host, url, username, password, rules)


def _repository_rules(read: _Reader, allow_var: str, deny_var: str) -> RepositoryRules:
    return RepositoryRules(
        allow=read.get(allow_var, parse_repository_patterns, ()),
        deny=read.get(deny_var, parse_repository_patterns, ()),
        allow_variable=allow_var,
        deny_variable=deny_var,
    )


def _url_any(value: str) -> str:
    """An endpoint URL (a path is allowed, e.g. an S3-compatible server behind a prefix)."""
    _http_url(value, "http://127.0.0.1:9000")
    return value.rstrip("/")
