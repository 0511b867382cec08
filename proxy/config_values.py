"""The values settings take: what each kind of ``PROXY_*`` value means and accepts.

Each parser turns the text of a variable into a value, or raises ValueError saying what it
accepts; ``proxy.config`` names the variable. The types here are what ``Settings`` holds.

Sizes are binary (IEC) units everywhere, 1 KiB = 1024 bytes: a setting is written ``4MiB`` or
``2GiB`` (``size``), a message that names a setting shows its value the same way
(``written_size``), and whatever people read (the status page, the ``cache`` and ``warm``
commands, start-up messages) is rounded to three figures (``human_bytes``: ``1.23 GiB``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from proxy.registry.policy import RepositoryRules

DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_HOST = "docker.io"
# Names clients use for Docker Hub (in image references, ``ns=`` and path prefixes).
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB_HOST, "registry-1.docker.io", "index.docker.io"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
#: The default scrub rate of a cache directory, bytes per second (S3: off).
DIRECTORY_SCRUB_RATE = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """One upstream registry: the host clients name it by, its URL and its account."""

    host: str
    url: str
    username: str | None = None
    password: str = field(default="", repr=False)
    repository_rules: RepositoryRules = field(default_factory=RepositoryRules)


# --- parsers ------------------------------------------------------------------------------------


def listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:5000")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected a port number from 1 to 65535")
    return host.strip("[]"), int(port)


def _http_url(value: str, example: str) -> SplitResult:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, e.g. {example}")
    return parts


def registry_url(
    value: str, accounts: str = "PROXY_UPSTREAM_USERNAME and PROXY_UPSTREAM_PASSWORD"
) -> str:
    """A registry base URL, normalised to scheme://host[:port]. An account in it is refused (it
    would be shown in /status and the logs): ``accounts`` names the settings for one."""
    parts = _http_url(value, "https://registry-1.docker.io")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"credentials do not belong in the URL: set {accounts} instead")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError("expected a registry base URL without path, e.g. https://ghcr.io")
    return f"{parts.scheme}://{parts.netloc}"


def endpoint_url(value: str) -> str:
    """An endpoint URL (a path is allowed, e.g. an S3-compatible server behind a prefix)."""
    _http_url(value, "http://127.0.0.1:9000")
    return value.rstrip("/")


def storage_location(value: str) -> StorageLocation:
    if value.startswith("s3://"):
        bucket, _, prefix = value[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError("expected s3://BUCKET/PREFIX or a directory path")
        return StorageLocation(bucket=bucket, prefix=prefix.strip("/"))
    if "://" in value:
        raise ValueError("expected a directory path or s3://BUCKET/PREFIX")
    return StorageLocation(path=Path(value).expanduser())


def choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return value.lower()

    return parse


def boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds, e.g. 300") from None
    if number < 0 or number != number or number == float("inf"):
        raise ValueError("expected a number of seconds >= 0")
    return number


def positive_seconds(value: str) -> float:
    number = seconds(value)
    if number == 0:
        raise ValueError("expected a number of seconds > 0")
    return number


def size(value: str, *, zero: bool = False) -> int:
    units = {"": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
    units |= {"g": 1024**3, "gib": 1024**3}
    number = value.rstrip("KkMmGgIiBb")
    unit = value[len(number) :].lower()
    if not number.isdigit() or unit not in units or (int(number) == 0 and not zero):
        accepted = ", or 0 (no reserve)" if zero else ""
        raise ValueError(f"expected a size in bytes, e.g. 4194304, 4MiB or 2GiB{accepted}")
    return int(number) * units[unit]


def size_or_zero(value: str) -> int:
    return size(value, zero=True)


def rate_or_off(value: str) -> int | None:
    """Bytes per second (``8MiB``, ``512k``, bytes), or ``off`` (``0`` too)."""
    if value.lower() in ("off", "0"):
        return None
    try:
        return size(value)
    except ValueError:
        raise ValueError("expected bytes per second (e.g. 8MiB or 512k), or off") from None


def written_size(count: int) -> str:
    """``count`` bytes as a setting is written, exactly: ``35GiB``, ``3328MiB``, ``1000``."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count and count % factor == 0:
            return f"{count // factor}{unit}"
    return str(count)


_IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
NO_SIZE = "\u2013"  # an en dash: a size not known (yet)


def human_bytes(count: float | None) -> str:
    """``1.23 GiB``, ``512 MiB``, ``0 B``: binary units, three significant figures at most."""
    if count is None:
        return NO_SIZE
    value = float(count)
    for unit in _IEC_UNITS:
        # Below 1023.5 a unit still reads as three figures; above, the next one does.
        if abs(value) < 1023.5 or unit == _IEC_UNITS[-1]:
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    figures = f"{value:.3g}" if abs(value) < 999.5 else f"{value:.0f}"
    return f"{figures} {unit}"


_BINARY_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def cache_size(value: str) -> CacheLimit | None:
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


def duration_or_off(value: str) -> float | None:
    """``30d``, ``12h``, ``90m``, ``3600`` (seconds), or ``off``."""
    lowered = value.lower().replace(" ", "")
    if lowered in ("off", "none", "never"):
        return None
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)", lowered)
    if match is None or float(match.group(1)) == 0:
        raise ValueError("expected a duration such as 30d, 12h, 90m or 3600 (seconds), or off")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def positive_duration(value: str) -> float:
    duration = duration_or_off(value)
    if duration is None:
        raise ValueError("expected a duration such as 1h, 30m or 600 (seconds)")
    return duration


def count(minimum: int, maximum: int | None = None, between: str = "") -> Callable[[str], int]:
    """A whole number from ``minimum`` (to ``maximum``; ``between`` says so in words)."""

    def parse(value: str) -> int:
        if not value.isdigit() or not minimum <= int(value) <= (maximum or int(value)):
            range_text = f"from {between}" if between else f">= {minimum}"
            raise ValueError(f"expected a whole number {range_text}")
        return int(value)

    return parse


def parse_networks(value: str) -> tuple[Network, ...]:
    """``10.0.0.0/16, 192.168.1.7`` -> networks; raises ValueError naming the bad entry."""
    networks = []
    for item in _items(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP network (expected CIDRs like 10.0.0.0/16)"
            ) from None
    return tuple(networks)


class HtpasswdError(ValueError):
    pass


def load_htpasswd(path: Path) -> dict[str, bytes]:
    """Users and bcrypt hashes from an htpasswd file (``htpasswd -B``)."""
    users: dict[str, bytes] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise HtpasswdError(f"{path}:{number}: only bcrypt entries are accepted (htpasswd -B)")
        users[user] = hashed.encode()
    return users


def htpasswd_file(value: str) -> dict[str, bytes]:
    try:
        users = load_htpasswd(Path(value))
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror}") from None
    if not users:
        raise ValueError("the file has no users (create them with: htpasswd -B FILE USER)")
    return users


def tokens(value: str) -> frozenset[str]:
    return frozenset(_items(value))


def cloudwatch_namespace(value: str) -> str:
    # CloudWatch's rule for namespaces; AWS/ is reserved for AWS's own.
    if not re.fullmatch(r"[A-Za-z0-9.\-_/#:]{1,255}", value) or value.startswith("AWS/"):
        raise ValueError("expected a CloudWatch namespace such as RegistryProxy (not AWS/...)")
    return value


def non_empty(value: str) -> str:
    if not value:
        raise ValueError("expected a non-empty value")
    return value


def directory(value: str) -> Path:
    return Path(non_empty(value))


_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")


def upstream_list(value: str) -> tuple[UpstreamSettings, ...]:
    """``ghcr.io,registry.test=http://...``: hosts and URLs (accounts and rules come later)."""
    entries = []
    for item in _items(value):
        host, _, url = item.partition("=")
        host = host.strip().lower()
        if not _HOST_RE.fullmatch(host):
            raise ValueError(
                f"{host!r} is not a registry host name with a dot (e.g. ghcr.io); "
                "expected HOST or HOST=URL, comma-separated"
            )
        if host in DOCKER_HUB_ALIASES:
            raise ValueError("docker.io is the default upstream (PROXY_UPSTREAM_URL)")
        accounts = " and ".join(credential_variable(host, p) for p in ("USERNAME", "PASSWORD"))
        entries.append(
            UpstreamSettings(
                host, registry_url(url.strip(), accounts) if url else f"https://{host}"
            )
        )
    return tuple(entries)


def credential_variable(host: str, part: str) -> str:
    """``PROXY_UPSTREAM_GHCR_IO_USERNAME`` for host ``ghcr.io`` and part ``USERNAME``.

    Every per-upstream setting is named this way (``..._ALLOW_REPOSITORIES`` too)."""
    return f"PROXY_UPSTREAM_{re.sub(r'[^A-Z0-9]', '_', host.upper())}_{part}"


def _items(value: str) -> Iterator[str]:
    """The entries of a comma-separated list, blanks dropped."""
    return filter(None, (part.strip() for part in value.split(",")))
