"""proxy.registry.policy: glob patterns, repository rules, tag TTL rules, configuration errors."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, load_settings
from proxy.registry.errors import ErrorCode, RegistryError
from proxy.registry.policy import (
    Glob,
    RepositoryPolicy,
    RepositoryRules,
    TagTtl,
    parse_repository_patterns,
    parse_tag_ttl_rules,
)


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("library/*", "library/golang", True),
        ("library/*", "library", False),
        ("library/*", "libraryx/golang", False),
        ("myorg/*", "myorg/team/app", True),  # * crosses /
        ("*", "a/b/c", True),
        ("library/golang", "library/golang", True),
        ("library/golang", "library/golang-x", False),
        ("library/go?ang", "library/golang", True),
        ("library/[a-c]*", "library/busybox", True),
        ("library/[a-c]*", "library/debian", False),
        ("library/[!a-c]*", "library/debian", True),
        ("a.b/c", "axb/c", False),  # a dot is a dot, not "any character"
    ],
)
def test_repository_globs(pattern: str, value: str, matches: bool) -> None:
    assert Glob.parse(pattern).matches(value) is matches


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("latest", "latest", True),
        ("nightly*", "nightly-2024-01-01", True),
        ("[0-9]*", "1.22.3", True),
        ("[0-9]*", "latest", False),
        ("sha256-*", f"sha256-{'a' * 64}.sig", True),
        ("Latest", "latest", False),  # tags are case-sensitive
    ],
)
def test_tag_globs(pattern: str, value: str, matches: bool) -> None:
    assert Glob.parse(pattern, tag=True).matches(value) is matches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("Library/*", "lower case"),
        ("library/golang:1.22", "':'"),
        ("library/[a-c", "closing"),
        ("library/[]x", "empty character class"),
        ("library/[z-a]", "range"),
        ("library /x", "' '"),
    ],
)
def test_bad_repository_patterns(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Glob.parse(pattern)


def test_repository_rules() -> None:
    rules = RepositoryRules(
        allow=parse_repository_patterns("library/*,myorg/*"),
        deny=parse_repository_patterns("library/ubuntu,myorg/secret*"),
    )
    assert rules.refusal("library/golang") is None
    assert rules.refusal("myorg/app") is None
    assert rules.refusal("library/ubuntu") == (
        "matches PROXY_DENY_REPOSITORIES pattern library/ubuntu"
    )
    assert "PROXY_DENY_REPOSITORIES pattern myorg/secret*" in (rules.refusal("myorg/secrets") or "")
    assert rules.refusal("bitnami/redis") == (
        "matches no pattern of PROXY_ALLOW_REPOSITORIES (library/*,myorg/*)"
    )
    assert RepositoryRules().refusal("anything/at/all") is None
    deny_only = RepositoryRules(deny=parse_repository_patterns("evil/*"))
    assert deny_only.refusal("library/golang") is None
    assert deny_only.refusal("evil/x") is not None


def test_policy_refusal_names_the_rule_in_the_message() -> None:
    # docker pull prints the error's message, not its detail: the rule must be in the message.
    policy = RepositoryPolicy(
        {
            "docker.io": RepositoryRules(allow=parse_repository_patterns("library/*")),
            "ghcr.io": RepositoryRules(
                deny=parse_repository_patterns("*"),
                deny_variable="PROXY_UPSTREAM_GHCR_IO_DENY_REPOSITORIES",
            ),
        },
        default_host="docker.io",
    )
    policy.check("docker.io", "library/golang")
    with pytest.raises(RegistryError) as denied:
        policy.check("docker.io", "bitnami/redis")
    assert denied.value.code is ErrorCode.DENIED
    assert "bitnami/redis" in denied.value.message
    assert "PROXY_ALLOW_REPOSITORIES" in denied.value.message
    with pytest.raises(RegistryError) as extra:
        policy.check("ghcr.io", "owner/repo")
    assert "ghcr.io/owner/repo" in extra.value.message
    assert "PROXY_UPSTREAM_GHCR_IO_DENY_REPOSITORIES pattern *" in extra.value.message
    policy.check("quay.io", "anything")  # no rules for that host: allowed


def test_tag_ttl_first_match_wins() -> None:
    ttl = TagTtl(
        300,
        parse_tag_ttl_rules("*:latest=60, *:nightly*=30 ,library/*:[0-9]*=86400,*:1*=5"),
        default_host="docker.io",
    )
    assert ttl.seconds("docker.io", "library/golang", "latest") == 60
    assert ttl.seconds("docker.io", "myorg/app", "nightly-3") == 30
    assert ttl.seconds("docker.io", "library/golang", "1.22.3") == 86400  # before *:1*
    assert ttl.seconds("docker.io", "myorg/app", "1.0") == 5
    assert ttl.seconds("docker.io", "myorg/app", "stable") == 300  # no rule: the default
    # Extra upstreams are matched with their host in front.
    assert ttl.seconds("ghcr.io", "library/x", "1.0") == 5
    host_rule = TagTtl(300, parse_tag_ttl_rules("ghcr.io/*:*=10"), default_host="docker.io")
    assert host_rule.seconds("ghcr.io", "owner/repo", "v1") == 10
    assert host_rule.seconds("docker.io", "owner/repo", "v1") == 300


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("latest=60", "REPOSITORY:TAG=SECONDS"),
        ("*:latest", "REPOSITORY:TAG=SECONDS"),
        ("*:latest=soon", "not a number"),
        ("*:latest=-1", ">= 0"),
        ("*:lat/est=1", "'/'"),
        ("Library/*:x=1", "lower case"),
        (",", "expected comma-separated"),
    ],
)
def test_bad_ttl_rules(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_tag_ttl_rules(value)


# --- the settings ------------------------------------------------------------------------------


def test_policy_settings_are_parsed() -> None:
    settings = load_settings(
        {
            "PROXY_ALLOW_REPOSITORIES": "library/*, myorg/*",
            "PROXY_DENY_REPOSITORIES": "library/ubuntu",
            "PROXY_EXTRA_UPSTREAMS": "ghcr.io,quay.io",
            "PROXY_UPSTREAM_GHCR_IO_ALLOW_REPOSITORIES": "myorg/*",
            "PROXY_TAG_TTL_RULES": "*:latest=60,library/*:[0-9]*=86400",
            "PROXY_NEGATIVE_TTL": "10",
            "PROXY_KEEP_DELETED_TAGS": "true",
        }
    )
    rules = settings.policy.repository_rules
    assert [str(p) for p in rules.allow] == ["library/*", "myorg/*"]
    assert [str(p) for p in rules.deny] == ["library/ubuntu"]
    ghcr, quay = settings.upstream.extra
    assert [str(p) for p in ghcr.repository_rules.allow] == ["myorg/*"]
    assert ghcr.repository_rules.allow_variable == "PROXY_UPSTREAM_GHCR_IO_ALLOW_REPOSITORIES"
    assert quay.repository_rules == type(quay.repository_rules)(
        allow_variable="PROXY_UPSTREAM_QUAY_IO_ALLOW_REPOSITORIES",
        deny_variable="PROXY_UPSTREAM_QUAY_IO_DENY_REPOSITORIES",
    )
    assert [str(r) for r in settings.policy.tag_ttl_rules] == [
        "*:latest=60",
        "library/*:[0-9]*=86400",
    ]
    assert settings.policy.negative_ttl == 10
    assert settings.policy.keep_deleted_tags is True


def test_policy_defaults() -> None:
    settings = load_settings({})
    assert settings.policy.repository_rules == RepositoryRules()
    assert settings.policy.tag_ttl_rules == ()
    assert settings.policy.negative_ttl == 30
    assert settings.policy.keep_deleted_tags is False


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PROXY_ALLOW_REPOSITORIES": "Library/*"}, "PROXY_ALLOW_REPOSITORIES"),
        ({"PROXY_DENY_REPOSITORIES": "library/[x"}, "PROXY_DENY_REPOSITORIES"),
        ({"PROXY_ALLOW_REPOSITORIES": ","}, "PROXY_ALLOW_REPOSITORIES"),
        (
            {
                "PROXY_EXTRA_UPSTREAMS": "ghcr.io",
                "PROXY_UPSTREAM_GHCR_IO_DENY_REPOSITORIES": "owner/repo:tag",
            },
            "PROXY_UPSTREAM_GHCR_IO_DENY_REPOSITORIES",
        ),
        ({"PROXY_TAG_TTL_RULES": "latest=60"}, "PROXY_TAG_TTL_RULES"),
        ({"PROXY_NEGATIVE_TTL": "-5"}, "PROXY_NEGATIVE_TTL"),
        ({"PROXY_KEEP_DELETED_TAGS": "sometimes"}, "PROXY_KEEP_DELETED_TAGS"),
    ],
)
def test_bad_policy_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env)
    assert str(error.value).startswith(f"{variable}=")
