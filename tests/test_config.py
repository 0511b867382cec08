"""Settings from the environment: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import DOCKER_HUB_URL, CacheLimit, ConfigError, load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 5000)
    assert settings.upstream.url == DOCKER_HUB_URL
    assert settings.upstream.username is None
    assert settings.storage.path == Path("cache")
    assert settings.log_format == "console"
    assert settings.tag_ttl == 300
    assert settings.prefetch is True
    assert (settings.fetch_pieces, settings.fetch_piece_threshold) == (4, 16 * 1024 * 1024)


def test_values_are_parsed() -> None:
    settings = load_settings(
        {
            "PROXY_LISTEN": "127.0.0.1:8080",
            "PROXY_UPSTREAM_URL": "http://127.0.0.1:5001/",
            "PROXY_UPSTREAM_USERNAME": "user",
            "PROXY_UPSTREAM_PASSWORD": "dckr_pat_secret",
            "PROXY_STORAGE": "s3://bucket/some/prefix/",
            "PROXY_LOG_FORMAT": "JSON",
            "PROXY_TAG_TTL": "0",
            "PROXY_MAX_MANIFEST_SIZE": "1MiB",
            "PROXY_MAX_CLIENTS": "200",
            "PROXY_PREFETCH": "false",
            "PROXY_FETCH_PIECES": "8",
            "PROXY_FETCH_PIECE_THRESHOLD": "32m",
        }
    )
    assert settings.prefetch is False
    assert (settings.fetch_pieces, settings.fetch_piece_threshold) == (8, 32 * 1024 * 1024)
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 8080)
    assert settings.upstream.url == "http://127.0.0.1:5001"
    assert settings.storage.bucket == "bucket" and settings.storage.prefix == "some/prefix"
    assert settings.log_format == "json"
    assert settings.tag_ttl == 0
    assert settings.max_manifest_bytes == 1024 * 1024
    assert settings.max_clients == 200
    assert "dckr_pat_secret" not in repr(settings)


def test_production_settings_are_parsed() -> None:
    settings = load_settings(
        {
            "PROXY_TRUSTED_PROXIES": "10.80.0.0/24,10.80.1.0/24",
            "PROXY_TRUSTED_HOPS": "2",
            "PROXY_OPERATOR_CIDRS": "127.0.0.1/32",
            "PROXY_SPOOL_MAX_SIZE": "35GiB",
            "PROXY_SPOOL_MIN_FREE": "512MiB",
            "PROXY_MEMORY_LIMIT": "2GiB",
            "PROXY_CLOUDWATCH_NAMESPACE": "RegistryProxy/Prod",
            "PROXY_CLOUDWATCH_INTERVAL": "30",
        }
    )
    assert len(settings.trusted_proxies) == 2 and settings.trusted_hops == 2
    assert [str(n) for n in settings.operator_cidrs] == ["127.0.0.1/32"]
    assert settings.spool_max_size == 35 * 1024**3
    assert settings.spool_min_free == 512 * 1024**2
    assert settings.memory_limit == 2 * 1024**3
    assert settings.cloudwatch_namespace == "RegistryProxy/Prod"
    assert settings.cloudwatch_interval == 30
    defaults = load_settings({})
    assert (defaults.trusted_hops, defaults.operator_cidrs) == (1, ())
    assert (defaults.spool_max_size, defaults.memory_limit) == (None, None)
    assert defaults.cloudwatch_namespace is None


@pytest.mark.parametrize(
    ("env", "variable", "accepted"),
    [
        ({"PROXY_LISTEN": "5000"}, "PROXY_LISTEN", "HOST:PORT"),
        ({"PROXY_LISTEN": "0.0.0.0:99999"}, "PROXY_LISTEN", "1 to 65535"),
        ({"PROXY_UPSTREAM_URL": "ftp://x"}, "PROXY_UPSTREAM_URL", "http"),
        ({"PROXY_UPSTREAM_URL": "https://x/path"}, "PROXY_UPSTREAM_URL", "without path"),
        ({"PROXY_LOG_FORMAT": "xml"}, "PROXY_LOG_FORMAT", "json, console"),
        ({"PROXY_TAG_TTL": "soon"}, "PROXY_TAG_TTL", "seconds"),
        ({"PROXY_TAG_TTL": "-1"}, "PROXY_TAG_TTL", ">= 0"),
        ({"PROXY_STORAGE": "gs://bucket"}, "PROXY_STORAGE", "s3://"),
        ({"PROXY_STORAGE": "s3://"}, "PROXY_STORAGE", "s3://BUCKET"),
        ({"PROXY_BLOB_REDIRECT": "maybe"}, "PROXY_BLOB_REDIRECT", "true or false"),
        ({"PROXY_BLOB_REDIRECT": "true"}, "PROXY_BLOB_REDIRECT", "s3://"),
        ({"PROXY_UPSTREAM_USERNAME": "u"}, "PROXY_UPSTREAM_PASSWORD", "access token"),
        ({"PROXY_UPSTREAM_PASSWORD": "p"}, "PROXY_UPSTREAM_USERNAME", "required"),
        ({"PROXY_MAX_MANIFEST_SIZE": "big"}, "PROXY_MAX_MANIFEST_SIZE", "4MiB"),
        ({"PROXY_MAX_CLIENTS": "0"}, "PROXY_MAX_CLIENTS", ">= 1"),
        ({"PROXY_PREFETCH": "sometimes"}, "PROXY_PREFETCH", "true or false"),
        ({"PROXY_FETCH_PIECES": "0"}, "PROXY_FETCH_PIECES", "1 (no pieces) to 16"),
        ({"PROXY_FETCH_PIECES": "17"}, "PROXY_FETCH_PIECES", "1 (no pieces) to 16"),
        ({"PROXY_FETCH_PIECE_THRESHOLD": "0"}, "PROXY_FETCH_PIECE_THRESHOLD", "4MiB"),
        ({"PROXY_CACHE_MAX_SIZE": "huge"}, "PROXY_CACHE_MAX_SIZE", "50GiB"),
        ({"PROXY_CACHE_MAX_SIZE": "0"}, "PROXY_CACHE_MAX_SIZE", "50GiB"),
        ({"PROXY_CACHE_MAX_SIZE": "150%"}, "PROXY_CACHE_MAX_SIZE", "at most 100"),
        (
            {"PROXY_CACHE_MAX_SIZE": "80%", "PROXY_STORAGE": "s3://b/p"},
            "PROXY_CACHE_MAX_SIZE",
            "500GiB",
        ),
        ({"PROXY_CACHE_EXPIRE_UNUSED": "a month"}, "PROXY_CACHE_EXPIRE_UNUSED", "30d"),
        ({"PROXY_CACHE_EXPIRE_UNUSED": "0d"}, "PROXY_CACHE_EXPIRE_UNUSED", "30d"),
        ({"PROXY_CACHE_SWEEP_INTERVAL": "off"}, "PROXY_CACHE_SWEEP_INTERVAL", "1h"),
        ({"PROXY_TRUSTED_HOPS": "0"}, "PROXY_TRUSTED_HOPS", ">= 1"),
        ({"PROXY_OPERATOR_CIDRS": "ops"}, "PROXY_OPERATOR_CIDRS", "CIDRs"),
        ({"PROXY_SPOOL_MAX_SIZE": "40TB"}, "PROXY_SPOOL_MAX_SIZE", "2GiB"),
        ({"PROXY_SPOOL_MIN_FREE": "lots"}, "PROXY_SPOOL_MIN_FREE", "0 (no reserve)"),
        ({"PROXY_MEMORY_LIMIT": "lots"}, "PROXY_MEMORY_LIMIT", "2GiB"),
        ({"PROXY_CLOUDWATCH_NAMESPACE": "AWS/ECS"}, "PROXY_CLOUDWATCH_NAMESPACE", "namespace"),
        ({"PROXY_CLOUDWATCH_NAMESPACE": "a b"}, "PROXY_CLOUDWATCH_NAMESPACE", "namespace"),
        ({"PROXY_CLOUDWATCH_INTERVAL": "0"}, "PROXY_CLOUDWATCH_INTERVAL", "> 0"),
    ],
)
def test_errors_name_the_variable_and_what_is_accepted(
    env: dict[str, str], variable: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(variable) and accepted in message
    assert "\n" not in message


def test_cache_size_and_expiry() -> None:
    directory = load_settings({})
    assert directory.cache_limit == CacheLimit(min_free_fraction=0.10)  # the disk stays usable
    assert directory.cache_expire_unused is None
    assert directory.cache_sweep_interval == 3600
    assert load_settings({"PROXY_STORAGE": "s3://b/p"}).cache_limit is None
    sizes = {
        "50GiB": 50 * 1024**3,
        "50G": 50 * 1024**3,
        "1.5gb": int(1.5 * 1024**3),
        "500MiB": 500 * 1024**2,
        "4096": 4096,
        "100b": 100,
        "2T": 2 * 1024**4,
    }
    for value, expected in sizes.items():
        assert load_settings({"PROXY_CACHE_MAX_SIZE": value}).cache_limit == CacheLimit(
            max_bytes=expected
        )
    s3 = load_settings({"PROXY_STORAGE": "s3://b/p", "PROXY_CACHE_MAX_SIZE": "1TiB"})
    assert s3.cache_limit == CacheLimit(max_bytes=1024**4)
    assert load_settings({"PROXY_CACHE_MAX_SIZE": "80%"}).cache_limit == CacheLimit(
        max_fraction=0.8
    )
    assert load_settings({"PROXY_CACHE_MAX_SIZE": "off"}).cache_limit is None
    durations = {"30d": 30 * 86400.0, "12h": 43200.0, "90m": 5400.0, "45": 45.0, "2w": 1209600.0}
    for value, seconds in durations.items():
        assert load_settings({"PROXY_CACHE_EXPIRE_UNUSED": value}).cache_expire_unused == seconds
    assert load_settings({"PROXY_CACHE_EXPIRE_UNUSED": "off"}).cache_expire_unused is None
    assert load_settings({"PROXY_CACHE_SWEEP_INTERVAL": "15m"}).cache_sweep_interval == 900
    assert directory.cache_record_access is True
    assert load_settings({"PROXY_CACHE_RECORD_ACCESS": "false"}).cache_record_access is False


def test_cli_reports_a_bad_setting_in_one_line_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env={"PROXY_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PROXY_LOG_FORMAT" in lines[0] and "json, console" in lines[0]
    assert "Traceback" not in result.stderr


def test_extra_upstreams_with_credentials() -> None:
    settings = load_settings(
        {
            "PROXY_EXTRA_UPSTREAMS": "ghcr.io, registry.test=http://127.0.0.1:5001",
            "PROXY_UPSTREAM_GHCR_IO_USERNAME": "bot",
            "PROXY_UPSTREAM_GHCR_IO_PASSWORD": "ghp_x",
        }
    )
    ghcr, local = settings.extra_upstreams
    assert (ghcr.host, ghcr.url, ghcr.username, ghcr.password) == (
        "ghcr.io",
        "https://ghcr.io",
        "bot",
        "ghp_x",
    )
    assert (local.host, local.url, local.username) == (
        "registry.test",
        "http://127.0.0.1:5001",
        None,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PROXY_EXTRA_UPSTREAMS": "localhost"}, "PROXY_EXTRA_UPSTREAMS"),
        ({"PROXY_EXTRA_UPSTREAMS": "docker.io"}, "PROXY_EXTRA_UPSTREAMS"),
        ({"PROXY_EXTRA_UPSTREAMS": "quay.io=ftp://x"}, "PROXY_EXTRA_UPSTREAMS"),
        (
            {"PROXY_EXTRA_UPSTREAMS": "quay.io", "PROXY_UPSTREAM_QUAY_IO_USERNAME": "u"},
            "PROXY_UPSTREAM_QUAY_IO_USERNAME",
        ),
    ],
)
def test_bad_extra_upstreams(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert variable in str(info.value)


@pytest.mark.parametrize(
    ("env", "pointing_at"),
    [
        (
            {"PROXY_UPSTREAM_URL": "https://bot:dckr_pat_s3cret@registry-1.docker.io"},
            ("PROXY_UPSTREAM_USERNAME", "PROXY_UPSTREAM_PASSWORD"),
        ),
        (
            {"PROXY_UPSTREAM_URL": "https://dckr_pat_s3cret@registry-1.docker.io"},
            ("PROXY_UPSTREAM_USERNAME", "PROXY_UPSTREAM_PASSWORD"),
        ),
        (
            {"PROXY_EXTRA_UPSTREAMS": "ghcr.io=https://bot:dckr_pat_s3cret@ghcr.io"},
            ("PROXY_UPSTREAM_GHCR_IO_USERNAME", "PROXY_UPSTREAM_GHCR_IO_PASSWORD"),
        ),
    ],
)
def test_credentials_in_an_upstream_url_are_refused_and_not_repeated(
    env: dict[str, str], pointing_at: tuple[str, str]
) -> None:
    """A URL with ``user:pass@`` would be shown in /status and the logs: refused at start-up,
    pointing at the settings that hold credentials, without repeating the secret."""
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(next(iter(env)))
    assert all(variable in message for variable in pointing_at), message
    assert "s3cret" not in message and "\n" not in message


def test_the_spool_reserve_can_be_turned_off() -> None:
    assert load_settings({"PROXY_SPOOL_MIN_FREE": "0"}).spool_min_free == 0
    assert load_settings({"PROXY_SPOOL_MIN_FREE": "2GiB"}).spool_min_free == 2 * 1024**3


def test_the_scrub_rate() -> None:
    assert load_settings({}).cache_scrub_rate == 8 * 1024**2  # a directory: on
    assert load_settings({"PROXY_STORAGE": "s3://b/p"}).cache_scrub_rate is None  # S3: off
    assert load_settings({"PROXY_CACHE_SCRUB_RATE": "off"}).cache_scrub_rate is None
    assert load_settings({"PROXY_CACHE_SCRUB_RATE": "0"}).cache_scrub_rate is None
    assert load_settings({"PROXY_CACHE_SCRUB_RATE": "512k"}).cache_scrub_rate == 512 * 1024
    s3 = {"PROXY_STORAGE": "s3://b/p", "PROXY_CACHE_SCRUB_RATE": "2MiB"}
    assert load_settings(s3).cache_scrub_rate == 2 * 1024**2
    with pytest.raises(ConfigError, match=r"^PROXY_CACHE_SCRUB_RATE=.*8MiB or 512k"):
        load_settings({"PROXY_CACHE_SCRUB_RATE": "fast"})
