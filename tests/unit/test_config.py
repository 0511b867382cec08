"""Settings from the environment: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import PROXY, REPO

from proxy.commands.cli import build_parser, plain, settings_from
from proxy.config import (
    DOCKER_HUB_URL,
    ROWS,
    CacheLimit,
    ConfigError,
    Setting,
    Settings,
    load_settings,
    markdown_tables,
)


def test_defaults() -> None:
    settings = load_settings({})
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 5000)
    assert settings.upstream.url == DOCKER_HUB_URL
    assert settings.upstream.username is None
    assert settings.storage.location.path == Path("cache")
    assert settings.operations.log_format == "console"
    assert settings.policy.tag_ttl == 300
    assert settings.upstream.prefetch is True
    assert (settings.upstream.fetch_pieces, settings.upstream.fetch_piece_threshold) == (
        4,
        16 * 1024 * 1024,
    )


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
    assert settings.upstream.prefetch is False
    assert (settings.upstream.fetch_pieces, settings.upstream.fetch_piece_threshold) == (
        8,
        32 * 1024 * 1024,
    )
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8080)
    assert settings.upstream.url == "http://127.0.0.1:5001"
    assert (
        settings.storage.location.bucket == "bucket"
        and settings.storage.location.prefix == "some/prefix"
    )
    assert settings.operations.log_format == "json"
    assert settings.policy.tag_ttl == 0
    assert settings.upstream.max_manifest_bytes == 1024 * 1024
    assert settings.listen.max_clients == 200
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
    assert len(settings.access.trusted_proxies) == 2 and settings.access.trusted_hops == 2
    assert [str(n) for n in settings.access.operator_cidrs] == ["127.0.0.1/32"]
    assert settings.storage.spool_max_size == 35 * 1024**3
    assert settings.storage.spool_min_free == 512 * 1024**2
    assert settings.upstream.memory_limit == 2 * 1024**3
    assert settings.operations.cloudwatch_namespace == "RegistryProxy/Prod"
    assert settings.operations.cloudwatch_interval == 30
    defaults = load_settings({})
    assert (defaults.access.trusted_hops, defaults.access.operator_cidrs) == (1, ())
    assert (defaults.storage.spool_max_size, defaults.upstream.memory_limit) == (None, None)
    assert defaults.operations.cloudwatch_namespace is None


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
    assert directory.cache.limit == CacheLimit(min_free_fraction=0.10)  # the disk stays usable
    assert directory.cache.expire_unused is None
    assert directory.cache.sweep_interval == 3600
    assert load_settings({"PROXY_STORAGE": "s3://b/p"}).cache.limit is None
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
        assert load_settings({"PROXY_CACHE_MAX_SIZE": value}).cache.limit == CacheLimit(
            max_bytes=expected
        )
    s3 = load_settings({"PROXY_STORAGE": "s3://b/p", "PROXY_CACHE_MAX_SIZE": "1TiB"})
    assert s3.cache.limit == CacheLimit(max_bytes=1024**4)
    assert load_settings({"PROXY_CACHE_MAX_SIZE": "80%"}).cache.limit == CacheLimit(
        max_fraction=0.8
    )
    assert load_settings({"PROXY_CACHE_MAX_SIZE": "off"}).cache.limit is None
    durations = {"30d": 30 * 86400.0, "12h": 43200.0, "90m": 5400.0, "45": 45.0, "2w": 1209600.0}
    for value, seconds in durations.items():
        assert load_settings({"PROXY_CACHE_EXPIRE_UNUSED": value}).cache.expire_unused == seconds
    assert load_settings({"PROXY_CACHE_EXPIRE_UNUSED": "off"}).cache.expire_unused is None
    assert load_settings({"PROXY_CACHE_SWEEP_INTERVAL": "15m"}).cache.sweep_interval == 900
    assert directory.cache.record_access is True
    assert load_settings({"PROXY_CACHE_RECORD_ACCESS": "false"}).cache.record_access is False


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
    ghcr, local = settings.upstream.extra
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


# --- the rows: README, --help, sections ---------------------------------------------------------

README = REPO / "README.md"
TABLES_START = "<!-- settings tables: python -m proxy.config -->"
TABLES_END = "<!-- end of settings tables -->"


def readme_tables() -> str:
    text = README.read_text()
    assert TABLES_START in text and TABLES_END in text, "README lost its settings-table markers"
    return text.split(TABLES_START, 1)[1].split(TABLES_END, 1)[0].strip()


def table_rows(markdown: str) -> list[tuple[str, str, str]]:
    """(section, variable, default) of every row of the tables, in order."""
    rows, section = [], ""
    for line in markdown.splitlines():
        if line.startswith("**"):
            section = line.strip("*").split(":")[0]
        elif line.startswith("| `"):
            variable, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
            rows.append((section, variable.strip("`"), default))
    return rows


def test_the_readme_tables_are_the_settings_rows() -> None:
    """Names, defaults, order and sections first (a readable difference), then every word."""
    expected = [(row.section, row.variable, row.shown_default) for row in ROWS]
    assert table_rows(readme_tables()) == expected
    assert readme_tables() == markdown_tables(), (
        "README's settings tables differ from proxy/config.py's rows: paste the output of "
        "`python -m proxy.config` between the markers"
    )


def test_every_variable_the_proxy_names_has_one_row() -> None:
    """Each ``PROXY_*`` name in proxy/'s source (messages, docstrings, readers) is a row's, or an
    extra upstream's instance of one (``PROXY_UPSTREAM_GHCR_IO_USERNAME``)."""
    variables = [row.variable for row in ROWS]
    assert len(variables) == len(set(variables))
    per_upstream = re.compile(
        r"PROXY_UPSTREAM_[A-Z0-9_]+_(USERNAME|PASSWORD|ALLOW_REPOSITORIES|DENY_REPOSITORIES)"
    )
    source = PROXY
    named = {
        (path.name, name)
        for path in source.rglob("*.py")
        for name in re.findall(r"PROXY_[A-Z0-9_<>]*[A-Z0-9>]", path.read_text())
    }
    unknown = {
        (file, name)
        for file, name in named
        if name not in variables and not per_upstream.fullmatch(name)
    }
    assert unknown <= {
        ("config.py", "PROXY_UPSTREAM_<HOST>"),
        ("config_values.py", "PROXY_UPSTREAM"),  # credential_variable's f-string
    }
    assert {row.section for row in ROWS} == {s.name for s in dataclasses.fields(Settings)}
    for row in ROWS:
        assert row.help and "\n" not in row.help and not row.help.endswith(".")


def test_field_names_are_unique_across_sections() -> None:
    """So a field name says its section (tests change settings by name: support.settings)."""
    names = [
        column.name
        for section in dataclasses.fields(Settings)
        for column in dataclasses.fields(getattr(Settings(), section.name))
    ]
    assert len(names) == len(set(names))


def test_a_written_default_is_the_settings_default() -> None:
    """Defaults are written once, as in the environment: the field's default is their parse,
    and setting the variable to its default changes nothing."""
    defaults = Settings()
    for row in ROWS:
        if row.default is not None:
            assert load_settings({row.variable: row.default}) == load_settings({})
    assert load_settings({}) == dataclasses.replace(defaults)
    assert defaults.policy.tag_ttl == 300 and defaults.upstream.max_manifest_bytes == 4 * 1024**2


def test_serve_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for row in ROWS:
        assert row.variable in text
        assert f"[default: {plain(row.shown_default)}]" in text, row.variable
    # the flags' help is the rows' help too
    assert f"--tag-ttl PROXY_TAG_TTL {plain(row_of('PROXY_TAG_TTL').help)}" in text


def test_flags_override_their_variables() -> None:
    args = build_parser().parse_args(["serve", "--tag-ttl", "5", "--listen", "127.0.0.1:81"])
    settings = settings_from(args, {"PROXY_TAG_TTL": "60", "PROXY_NEGATIVE_TTL": "7"})
    assert (settings.policy.tag_ttl, settings.policy.negative_ttl) == (5, 7)
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 81)
    gc = build_parser().parse_args(["cache", "gc", "--expire-unused", "30d"])
    assert settings_from(gc, {}).cache.expire_unused == 30 * 86400


def row_of(variable: str) -> Setting:
    return next(row for row in ROWS if row.variable == variable)


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
    assert load_settings({"PROXY_SPOOL_MIN_FREE": "0"}).storage.spool_min_free == 0
    assert load_settings({"PROXY_SPOOL_MIN_FREE": "2GiB"}).storage.spool_min_free == 2 * 1024**3


def test_the_scrub_rate() -> None:
    assert load_settings({}).cache.scrub_rate == 8 * 1024**2  # a directory: on
    assert load_settings({"PROXY_STORAGE": "s3://b/p"}).cache.scrub_rate is None  # S3: off
    assert load_settings({"PROXY_CACHE_SCRUB_RATE": "off"}).cache.scrub_rate is None
    assert load_settings({"PROXY_CACHE_SCRUB_RATE": "0"}).cache.scrub_rate is None
    assert load_settings({"PROXY_CACHE_SCRUB_RATE": "512k"}).cache.scrub_rate == 512 * 1024
    s3 = {"PROXY_STORAGE": "s3://b/p", "PROXY_CACHE_SCRUB_RATE": "2MiB"}
    assert load_settings(s3).cache.scrub_rate == 2 * 1024**2
    with pytest.raises(ConfigError, match=r"^PROXY_CACHE_SCRUB_RATE=.*8MiB or 512k"):
        load_settings({"PROXY_CACHE_SCRUB_RATE": "fast"})


def test_bad_access_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PROXY_ALLOW_CIDRS"):
        load_settings({"PROXY_ALLOW_CIDRS": "10.0.0.0/33"})
    with pytest.raises(ConfigError, match="PROXY_AUTH_HTPASSWD"):
        load_settings({"PROXY_AUTH_HTPASSWD": str(tmp_path / "missing")})
    plain = tmp_path / "plain"
    plain.write_text("user:{SHA}abc\n")
    with pytest.raises(ConfigError, match="bcrypt"):
        load_settings({"PROXY_AUTH_HTPASSWD": str(plain)})
