"""Settings: one row per ``PROXY_*`` variable, read once from the environment and validated.

A row is a field of a section (``Settings.listen``, ``.upstream``, ``.storage``, ``.cache``,
``.policy``, ``.access``, ``.operations``) declared with ``setting(...)``: the variable, the parser
of its value, its default as written in the environment (or what leaving it unset means), and one
line of help. From the rows come the defaults of ``Settings``, ``load_settings`` (a bad value
stops the program with one line naming the variable and what it accepts), the settings listed by
``registry-proxy serve --help`` and the README's tables (``python -m proxy.config`` prints them;
tests/unit/test_config.py fails when the README differs). Nothing reads the environment at
import time.

To add a setting: add a row to its section, and run ``python -m proxy.config`` for the README.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from proxy import config_values as values
from proxy.config_values import (
    DIRECTORY_DEFAULT_LIMIT,
    DIRECTORY_SCRUB_RATE,
    DOCKER_HUB_ALIASES,
    DOCKER_HUB_HOST,
    DOCKER_HUB_URL,
    CacheLimit,
    Network,
    StorageLocation,
    UpstreamSettings,
    credential_variable,
    parse_networks,
)
from proxy.registry.policy import (
    Glob,
    RepositoryRules,
    TagTtlRule,
    parse_repository_patterns,
    parse_tag_ttl_rules,
)

# Value types and parsers live in proxy.config_values; these are reached through here too.
__all__ = [
    "DIRECTORY_DEFAULT_LIMIT",
    "DIRECTORY_SCRUB_RATE",
    "DOCKER_HUB_ALIASES",
    "DOCKER_HUB_HOST",
    "DOCKER_HUB_URL",
    "ENV_VARS",
    "ROWS",
    "SECTIONS",
    "CacheLimit",
    "ConfigError",
    "Network",
    "Setting",
    "Settings",
    "StorageLocation",
    "UpstreamSettings",
    "credential_variable",
    "load_settings",
    "markdown_tables",
    "parse_networks",
]

T = TypeVar("T")
V = TypeVar("V")


class ConfigError(Exception):
    """A setting has a value the proxy cannot use; the message names the variable."""


# --- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One row: a variable, what it accepts, its default, and what it is for.

    ``help`` is one line of Markdown, as the README shows it. ``default`` is written as in the
    environment (the field's default is its parsed value); None when unset is the default, which
    ``unset`` describes. ``flag`` is the command-line option that overrides it, if any.
    """

    variable: str
    parse: Callable[[str], object]
    help: str
    default: str | None = None
    unset: str = "unset"
    flag: str | None = None
    secret: bool = False  # never in a repr (passwords, tokens)
    section: str = ""  # filled in by ROWS: the Settings attribute of its section

    @property
    def shown_default(self) -> str:
        return f"`{self.default}`" if self.default is not None else self.unset

    def read(self, raw: str, variable: str | None = None) -> Any:
        """The parsed value; ConfigError naming the variable and what it accepts."""
        try:
            return self.parse(raw.strip())
        except ValueError as exc:
            # Never repeat an account written into a URL (user:password@host).
            shown = re.sub(r"//[^/@]*@", "//***@", raw)
            raise ConfigError(f"{variable or self.variable}={shown!r} is invalid: {exc}") from None


_ROW = "setting"


def setting(
    variable: str,
    parse: Callable[[str], T],
    help: str,
    *,
    default: str,
    flag: str | None = None,
) -> T:
    """A section field for ``variable``, whose default is ``default`` as written."""
    return cast(T, _field(parse(default), Setting(variable, parse, help, default, flag=flag)))


def unset_by_default(
    variable: str,
    parse: Callable[[str], T],
    help: str,
    *,
    unset: str,
    value: V,
    flag: str | None = None,
    secret: bool = False,
) -> T | V:
    """A section field for ``variable``, ``value`` when unset (``unset`` says what that means)."""
    row = Setting(variable, parse, help, unset=unset, flag=flag, secret=secret)
    return cast(T | V, _field(value, row))


def _field(value: object, row: Setting) -> Any:
    metadata = {_ROW: row}
    if type(value).__hash__ is None:  # a mutable default: every Settings gets its own copy
        return field(
            default_factory=lambda: copy.copy(value), repr=not row.secret, metadata=metadata
        )
    return field(default=value, repr=not row.secret, metadata=metadata)


# --- the sections -------------------------------------------------------------------------------
# One row a field, kept compact (the formatter would spread each over six lines).
# fmt: off


@dataclass(frozen=True, slots=True)
class ListenSection:
    """listen: serving clients"""

    address: tuple[str, int] = setting(
        "PROXY_LISTEN", values.listen_address,
        "address to listen on (`HOST:PORT`)",
        default="0.0.0.0:5000", flag="--listen")
    max_clients: int = setting(
        "PROXY_MAX_CLIENTS", values.count(1),
        "requests served at once; more get `503 UNAVAILABLE` with `Retry-After: 1` (see [Clients "
        "at once](#clients-at-once))",
        default="1024")
    client_idle_timeout: float = setting(
        "PROXY_CLIENT_IDLE_TIMEOUT", values.positive_seconds,
        "seconds a client connection may move no byte: an idle keep-alive connection, or a "
        "transfer the client reads nothing of, is then closed (set above the load balancer's "
        "idle timeout)",
        default="75")
    shutdown_grace: float = setting(
        "PROXY_SHUTDOWN_GRACE", values.seconds,
        "on SIGTERM, the one deadline for fetches and transfers in progress; the process exits a "
        "few seconds after it at most",
        default="30")

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]


@dataclass(frozen=True, slots=True)
class UpstreamSection:
    """upstream: the registries pulled from, with what account, and how"""

    url: str = setting(
        "PROXY_UPSTREAM_URL", values.registry_url,
        "upstream registry; plain `http://` is allowed for local upstreams; an account in the URL "
        "(`user:pass@`) is refused: use the two settings below",
        default=DOCKER_HUB_URL, flag="--upstream-url")
    username: str | None = unset_by_default(
        "PROXY_UPSTREAM_USERNAME", values.non_empty,
        "the one Docker Hub account the proxy pulls with",
        unset="unset (anonymous)", value=None)
    password: str = unset_by_default(
        "PROXY_UPSTREAM_PASSWORD", values.non_empty,
        "its access token (required with the username)",
        unset="unset", value="", secret=True)
    extra: tuple[UpstreamSettings, ...] = unset_by_default(
        "PROXY_EXTRA_UPSTREAMS", values.upstream_list,
        "more registries, `HOST` or `HOST=URL`, comma-separated: `ghcr.io,quay.io,registry.k8s.io`",
        unset="none", value=())
    connect_timeout: float = setting(
        "PROXY_UPSTREAM_CONNECT_TIMEOUT", values.positive_seconds,
        "seconds to connect to the upstream",
        default="10")
    read_timeout: float = setting(
        "PROXY_UPSTREAM_READ_TIMEOUT", values.positive_seconds,
        "seconds of upstream silence before a request fails (timeouts are not retried)",
        default="30")
    max_manifest_bytes: int = setting(
        "PROXY_MAX_MANIFEST_SIZE", values.size,
        "largest manifest accepted from the upstream",
        default="4MiB")
    max_fetches: int = setting(
        "PROXY_MAX_UPSTREAM_FETCHES", values.count(1),
        "blob downloads from upstreams at once; more wait for a slot",
        default="64")
    memory_limit: int | None = unset_by_default(
        "PROXY_MEMORY_LIMIT", values.size,
        "the container's memory: start-up refuses a `PROXY_MAX_UPSTREAM_FETCHES` whose uploads "
        "cannot fit in it",
        unset="unset (not checked)", value=None)
    prefetch: bool = setting(
        "PROXY_PREFETCH", values.boolean,
        "when an image manifest is served, fetch its blobs before the client asks (see [Cold "
        "pulls](#cold-pulls-prefetch-and-pieces))",
        default="true")
    fetch_pieces: int = setting(
        "PROXY_FETCH_PIECES", values.count(1, 16, "1 (no pieces) to 16"),
        "Range requests a big blob is fetched in at once; `1`: one stream per blob",
        default="4")
    fetch_piece_threshold: int = setting(
        "PROXY_FETCH_PIECE_THRESHOLD", values.size,
        "blobs larger than this are fetched in pieces",
        default="16MiB")


@dataclass(frozen=True, slots=True)
class StorageSection:
    """storage: where the cache and the downloads in progress live"""

    location: StorageLocation = setting(
        "PROXY_STORAGE", values.storage_location,
        "cache directory, or `s3://BUCKET/PREFIX`",
        default="./cache", flag="--storage")
    s3_endpoint_url: str | None = unset_by_default(
        "PROXY_S3_ENDPOINT_URL", values.endpoint_url,
        "an S3-compatible endpoint (MinIO, moto, ...)",
        unset="AWS", value=None)
    blob_redirect: bool = setting(
        "PROXY_BLOB_REDIRECT", values.boolean,
        "`true`: answer cached blob GETs with a 307 to a presigned S3 URL (S3 only)",
        default="false")
    spool_dir: Path | None = unset_by_default(
        "PROXY_SPOOL_DIR", values.directory,
        "where in-flight downloads are spooled (the image sets `/var/lib/registry-proxy/spool`): a "
        "directory of its own, empty or not there yet; the proxy works in a "
        "`registry-proxy-spool/` subdirectory it makes there (with a marker) and refuses at "
        "start-up a directory holding anything else",
        unset="`<cache>/spool` or `/tmp/registry-proxy-spool`", value=None)
    spool_max_size: int | None = unset_by_default(
        "PROXY_SPOOL_MAX_SIZE", values.size,
        "most disk the spool may take; beyond it new upstream fetches stream through memory "
        "instead (an 8 MiB window each)",
        unset="unset (free space only)", value=None)
    spool_min_free: int = setting(
        "PROXY_SPOOL_MIN_FREE", values.size_or_zero,
        "free space kept on the spool's filesystem; below it new upstream fetches stream through "
        "memory instead; `0`: no reserve",
        default="1GiB")


@dataclass(frozen=True, slots=True)
class CacheSection:
    """cache: its size and expiry (see [Cache size and expiry](#cache-size-and-expiry))"""

    limit: CacheLimit | None = unset_by_default(
        "PROXY_CACHE_MAX_SIZE", values.cache_size,
        "largest cache: a size (`50GiB`, `500MiB`), a share of the directory's disk (`80%`), or "
        "`off`",
        flag="--max-size", unset="directory: keep 10% of its disk free; S3: off",
        value=DIRECTORY_DEFAULT_LIMIT)
    expire_unused: float | None = setting(
        "PROXY_CACHE_EXPIRE_UNUSED", values.duration_or_off,
        "delete cache entries not served for this long (`30d`, `12h`, `90m`, seconds)",
        default="off", flag="--expire-unused")
    sweep_interval: float = setting(
        "PROXY_CACHE_SWEEP_INTERVAL", values.positive_duration,
        "how often each server sweeps for expired entries and merges the last-use records",
        default="1h")
    scrub_rate: int | None = unset_by_default(
        "PROXY_CACHE_SCRUB_RATE", values.rate_or_off,
        "bytes per second the background scrub re-hashes cached blobs at (a pass at most once a "
        "day, the first ten minutes after start), removing those whose bytes changed; `off`",
        unset="directory: `8MiB`; S3: off", value=DIRECTORY_SCRUB_RATE)
    record_access: bool = setting(
        "PROXY_CACHE_RECORD_ACCESS", values.boolean,
        "`false`: record no uses (expiry and eviction then go by the time written); for "
        "measurements",
        default="true")


@dataclass(frozen=True, slots=True)
class PolicySection:
    """policy: what may be pulled, how long a tag is trusted (see [Policy](#policy))"""

    allow_repositories: tuple[Glob, ...] = unset_by_default(
        "PROXY_ALLOW_REPOSITORIES", parse_repository_patterns,
        "Docker Hub repositories that may be pulled, comma-separated globs: `library/*,myorg/*`",
        unset="all", value=())
    deny_repositories: tuple[Glob, ...] = unset_by_default(
        "PROXY_DENY_REPOSITORIES", parse_repository_patterns,
        "Docker Hub repositories that may not be pulled; deny wins over allow",
        unset="none", value=())
    tag_ttl: float = setting(
        "PROXY_TAG_TTL", values.seconds,
        "seconds a tag is served without asking the upstream; `0` revalidates every time",
        default="300", flag="--tag-ttl")
    tag_ttl_rules: tuple[TagTtlRule, ...] = unset_by_default(
        "PROXY_TAG_TTL_RULES", parse_tag_ttl_rules,
        "TTL per tag pattern, `REPOSITORY:TAG=SECONDS` comma-separated, first match wins: "
        "`*:latest=60,library/*:[0-9]*=86400`",
        unset="none", value=())
    negative_ttl: float = setting(
        "PROXY_NEGATIVE_TTL", values.seconds,
        "seconds an upstream 404 for a tag, manifest or referrers list is remembered, and a tag "
        "list (`tags/list`) kept; `0` never",
        default="30")
    keep_deleted_tags: bool = setting(
        "PROXY_KEEP_DELETED_TAGS", values.boolean,
        "`true`: a tag deleted upstream keeps serving its last image, with a `Warning`",
        default="false")

    @property
    def repository_rules(self) -> RepositoryRules:
        """Docker Hub's repository rules (each extra upstream has its own)."""
        return RepositoryRules(
            self.allow_repositories,
            self.deny_repositories,
            "PROXY_ALLOW_REPOSITORIES",
            "PROXY_DENY_REPOSITORIES")


@dataclass(frozen=True, slots=True)
class AccessSection:
    """access: who may use the proxy (see [Access control](#access-control-production))"""

    allow_cidrs: tuple[Network, ...] = unset_by_default(
        "PROXY_ALLOW_CIDRS", values.parse_networks,
        "client networks allowed to connect (403 `DENIED` otherwise)",
        unset="all", value=())
    trusted_proxies: tuple[Network, ...] = unset_by_default(
        "PROXY_TRUSTED_PROXIES", values.parse_networks,
        "load balancer networks whose `X-Forwarded-For` is believed",
        unset="none", value=())
    trusted_hops: int = setting(
        "PROXY_TRUSTED_HOPS", values.count(1),
        "proxies in front that append to `X-Forwarded-For`: the client is that many entries from "
        "the right, whatever the rest says",
        default="1")
    operator_cidrs: tuple[Network, ...] = unset_by_default(
        "PROXY_OPERATOR_CIDRS", values.parse_networks,
        "networks that may read `/metrics`, `/status` and the status page (others need a login)",
        unset="unset (unrestricted)", value=())
    htpasswd_users: dict[str, bytes] = unset_by_default(
        "PROXY_AUTH_HTPASSWD", values.htpasswd_file,
        "htpasswd file (bcrypt, `htpasswd -B`): clients must `docker login`",
        unset="unset", value={}, secret=True)
    auth_tokens: frozenset[str] = unset_by_default(
        "PROXY_AUTH_TOKENS", values.tokens,
        "comma-separated static tokens, as `Bearer` or as the login password",
        unset="unset", value=frozenset(), secret=True)
    anonymous_cidrs: tuple[Network, ...] = unset_by_default(
        "PROXY_ANONYMOUS_CIDRS", values.parse_networks,
        "networks that need no login when logins are on (Docker mirror clients)",
        unset="none", value=())


@dataclass(frozen=True, slots=True)
class OperationsSection:
    """operations: logs and metrics"""

    log_format: str = setting(
        "PROXY_LOG_FORMAT", values.choice("json", "console"),
        "`json` or `console`",
        default="console", flag="--log-format")
    log_level: str = setting(
        "PROXY_LOG_LEVEL", values.choice("debug", "info", "warning", "error"),
        "`debug`, `info`, `warning` or `error`",
        default="info")
    quota_warn_remaining: int = setting(
        "PROXY_QUOTA_WARN_REMAINING", values.count(0),
        "log `upstream.quota_low` when fewer upstream pulls remain",
        default="10")
    cloudwatch_namespace: str | None = unset_by_default(
        "PROXY_CLOUDWATCH_NAMESPACE", values.cloudwatch_namespace,
        "write CloudWatch embedded-metric-format lines (fleet totals) in this namespace",
        unset="unset (off)", value=None)
    cloudwatch_interval: float = setting(
        "PROXY_CLOUDWATCH_INTERVAL", values.positive_seconds,
        "seconds between those lines",
        default="60")


_PER_HOST = "PROXY_UPSTREAM_<HOST>_"
# Each extra upstream's own settings, named after its host (``PROXY_UPSTREAM_GHCR_IO_USERNAME``),
# listed after the rest of their sections.
PER_UPSTREAM = (
    Setting(
        "PROXY_UPSTREAM_<HOST>_USERNAME", values.non_empty,
        "account for an extra upstream, e.g. `PROXY_UPSTREAM_GHCR_IO_USERNAME`",
        section="upstream"),
    Setting(
        "PROXY_UPSTREAM_<HOST>_PASSWORD", values.non_empty,
        "its access token (required with the username)",
        section="upstream"),
    Setting(
        "PROXY_UPSTREAM_<HOST>_ALLOW_REPOSITORIES", parse_repository_patterns,
        "repository rules of an extra upstream, e.g. `PROXY_UPSTREAM_GHCR_IO_ALLOW_REPOSITORIES`",
        unset="all", section="policy"),
    Setting(
        "PROXY_UPSTREAM_<HOST>_DENY_REPOSITORIES", parse_repository_patterns,
        "the same, refused",
        unset="none", section="policy"),
)


# fmt: on


@dataclass(frozen=True, slots=True)
class Settings:
    listen: ListenSection = field(default_factory=ListenSection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)
    storage: StorageSection = field(default_factory=StorageSection)
    cache: CacheSection = field(default_factory=CacheSection)
    policy: PolicySection = field(default_factory=PolicySection)
    access: AccessSection = field(default_factory=AccessSection)
    operations: OperationsSection = field(default_factory=OperationsSection)

    @property
    def upstreams(self) -> tuple[UpstreamSettings, ...]:
        """Every upstream registry: Docker Hub (the default, served at the root) first."""
        up = self.upstream
        hub = UpstreamSettings(
            DOCKER_HUB_HOST, up.url, up.username, up.password, self.policy.repository_rules
        )
        return (hub, *up.extra)


def _sections() -> Iterator[tuple[str, type[Any]]]:
    """(attribute, section class) of each section, in order (each field's default factory)."""
    for section in fields(Settings):
        yield section.name, cast(type[Any], section.default_factory)


def _row_fields(section: type[Any]) -> Iterator[tuple[Field[Any], Setting]]:
    for column in fields(section):
        yield column, column.metadata[_ROW]


#: Every setting in the order the README and ``--help`` show them: section by section.
ROWS: tuple[Setting, ...] = tuple(
    row
    for name, section in _sections()
    for row in (
        *(replace(row, section=name) for _, row in _row_fields(section)),
        *(row for row in PER_UPSTREAM if row.section == name),
    )
)
#: Each section's attribute and title (its class's docstring), in order.
SECTIONS: dict[str, str] = {name: section.__doc__ or name for name, section in _sections()}
#: What each variable is for, by name (deployment files are checked against it).
ENV_VARS: dict[str, str] = {row.variable: row.help for row in ROWS}


# --- reading the environment --------------------------------------------------------------------


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``env`` (default: the process environment); ConfigError on a bad
    value, naming its variable and what it accepts."""
    env = os.environ if env is None else env
    sections = {}
    for name, section in _sections():
        given = {
            column.name: row.read(env[row.variable])
            for column, row in _row_fields(section)
            if env.get(row.variable)
        }
        sections[name] = section(**given)
    settings = Settings(**sections)
    return _checked(settings, env)


def _checked(settings: Settings, env: Mapping[str, str]) -> Settings:
    """What no single row can tell: settings that go together, defaults that depend on others."""
    upstream, storage, cache = settings.upstream, settings.storage, settings.cache
    if upstream.username is not None and not upstream.password:
        raise ConfigError(
            "PROXY_UPSTREAM_PASSWORD is not set: it is required with PROXY_UPSTREAM_USERNAME "
            "(use a Docker Hub access token)"
        )
    if upstream.password and upstream.username is None:
        raise ConfigError("PROXY_UPSTREAM_USERNAME is not set: it is required with the password")
    if storage.blob_redirect and not storage.location.is_s3:
        raise ConfigError("PROXY_BLOB_REDIRECT=true needs PROXY_STORAGE=s3://BUCKET/PREFIX")
    if storage.location.is_s3 and not env.get("PROXY_CACHE_MAX_SIZE"):
        cache = replace(cache, limit=None)  # S3 has no disk to keep free: no limit by default
    if storage.location.is_s3 and not env.get("PROXY_CACHE_SCRUB_RATE"):
        # S3 objects cannot change in place; a scrub there is a billed read of the whole
        # bucket by every instance: off unless asked for.
        cache = replace(cache, scrub_rate=None)
    if storage.location.is_s3 and cache.limit is not None and cache.limit.max_fraction:
        raise ConfigError(
            "PROXY_CACHE_MAX_SIZE: a percentage of the disk needs a cache directory; "
            "give S3 a size such as 500GiB"
        )
    extra = tuple(_extra_upstream(env, registry) for registry in upstream.extra)
    return replace(settings, upstream=replace(upstream, extra=extra), cache=cache)


def _extra_upstream(env: Mapping[str, str], registry: UpstreamSettings) -> UpstreamSettings:
    """An extra upstream with its account and repository rules (the PER_UPSTREAM rows)."""

    def variable(row: Setting) -> str:
        return credential_variable(registry.host, row.variable.removeprefix(_PER_HOST))

    username, password, allow, deny = (
        row.read(env[variable(row)], variable(row)) if env.get(variable(row)) else None
        for row in PER_UPSTREAM
    )
    user_row, password_row, allow_row, deny_row = PER_UPSTREAM
    if (username is None) != (password is None):
        raise ConfigError(f"{variable(user_row)} and {variable(password_row)} must be set together")
    rules = RepositoryRules(allow or (), deny or (), variable(allow_row), variable(deny_row))
    return replace(registry, username=username, password=password or "", repository_rules=rules)


# --- the rows as the README's tables (the CLI's --help: proxy/commands/cli.py) ------------------


def markdown_tables() -> str:
    """The README's settings tables: one per section, in the order of ROWS."""
    tables = []
    for name, title in SECTIONS.items():
        lines = [
            f"**{title}**",
            "",
            "| variable | default | meaning |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| `{r.variable}` | {r.shown_default} | {r.help} |" for r in ROWS if r.section == name
        ]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


if __name__ == "__main__":
    print(markdown_tables())
