"""Content policy: which repositories may be pulled, and how long each tag is trusted.

One home for both, used by the HTTP routes and by the command-line tools (through
``Services.resolve``), so a pull, a ``warm`` and a ``cache`` command obey the same rules.

Patterns are globs over repository names and tags, matched case-sensitively against the whole
value:

    *        any run of characters, ``/`` included (``myorg/*`` is everything under myorg)
    ?        one character
    [...]    one character of the class; ``[!...]`` one character not in it; ``a-z`` ranges

Every other character must be one a repository name (or, in a tag pattern, a tag) can contain,
so a pattern that could never match (``Library/*``, ``golang:1.22`` in a repository list) is a
configuration error naming its variable instead of a rule that silently does nothing.

Repository rules (per upstream): with an allow list, a repository must match one of its patterns;
a repository matching a deny pattern is refused whatever the allow list says (deny wins). A
refusal is ``403 DENIED`` naming the variable and the pattern, decided before any upstream
request.

Tag TTL rules (for every upstream): ``REPOSITORY:TAG=SECONDS``, the first rule that matches a tag
gives its TTL, ``PROXY_TAG_TTL`` otherwise. Repositories of an extra upstream are matched with
their host in front (``ghcr.io/owner/repo``), Docker Hub's as they are (``library/golang``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.registry.errors import ErrorCode, RegistryError

# Characters a repository name / a tag may contain (the grammar in proxy.registry.reference).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True, slots=True)
class Glob:
    """A validated glob pattern and the regular expression it stands for."""

    text: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str, *, tag: bool = False) -> Glob:
        """Raise ValueError (saying what is wrong) for a pattern that can never match."""
        alphabet = _TAG_CHARS if tag else _NAME_CHARS
        what = "tag" if tag else "repository"
        if not text:
            raise ValueError(f"empty {what} pattern")
        parts: list[str] = []
        i = 0
        while i < len(text):
            char = text[i]
            if char == "*":
                parts.append(".*")
            elif char == "?":
                parts.append(".")
            elif char == "[":
                end = text.find("]", i + 2 if text[i + 1 : i + 2] == "!" else i + 1)
                if end < 0:
                    raise ValueError(f"pattern {text!r}: '[' without a closing ']'")
                parts.append(_char_class(text, text[i + 1 : end], alphabet))
                i = end
            elif char in alphabet:
                parts.append(re.escape(char))
            else:
                raise ValueError(
                    f"pattern {text!r}: {char!r} cannot occur in a {what} name"
                    + (" (names are lower case)" if char.isupper() else "")
                )
            i += 1
        return cls(text, re.compile("".join(parts)))

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None

    def __str__(self) -> str:
        return self.text


def _char_class(pattern: str, body: str, alphabet: frozenset[str]) -> str:
    negate = body.startswith("!")
    members = body[1:] if negate else body
    if not members:
        raise ValueError(f"pattern {pattern!r}: empty character class")
    for char in members:
        if char != "-" and char not in alphabet:
            raise ValueError(f"pattern {pattern!r}: {char!r} in a character class")
    escaped = "".join("-" if c == "-" else re.escape(c) for c in members)
    try:
        re.compile(f"[{escaped}]")
    except re.error:
        raise ValueError(f"pattern {pattern!r}: bad character range in [{body}]") from None
    return f"[{'^' if negate else ''}{escaped}]"


def parse_repository_patterns(value: str) -> tuple[Glob, ...]:
    """``library/*,myorg/*`` -> patterns (ValueError with the reason for a bad one)."""
    patterns = tuple(Glob.parse(item.strip()) for item in value.split(",") if item.strip())
    if not patterns:
        raise ValueError("expected comma-separated repository patterns, e.g. library/*,myorg/*")
    return patterns


def display_name(upstream_host: str, repository: str, default_host: str) -> str:
    """``library/golang`` for the default upstream, ``ghcr.io/owner/repo`` for the others."""
    return repository if upstream_host == default_host else f"{upstream_host}/{repository}"


# --- repository rules ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepositoryRules:
    """One upstream's allow and deny lists, with the variables they came from (for messages)."""

    allow: tuple[Glob, ...] = ()
    deny: tuple[Glob, ...] = ()
    allow_variable: str = "PROXY_ALLOW_REPOSITORIES"
    deny_variable: str = "PROXY_DENY_REPOSITORIES"

    def refusal(self, repository: str) -> str | None:
        """Why ``repository`` may not be pulled, or None when it may."""
        for pattern in self.deny:
            if pattern.matches(repository):
                return f"matches {self.deny_variable} pattern {pattern}"
        if self.allow and not any(pattern.matches(repository) for pattern in self.allow):
            return f"matches no pattern of {self.allow_variable} ({','.join(map(str, self.allow))})"
        return None


class RepositoryPolicy:
    """The repository rules of every upstream, by the host requests name it with."""

    def __init__(self, rules: Mapping[str, RepositoryRules], *, default_host: str) -> None:
        self._rules = dict(rules)
        self._default_host = default_host

    def check(self, upstream_host: str, repository: str) -> None:
        """Raise DENIED (403) naming the rule when ``repository`` may not be pulled.

        The message (not only the detail) names it: ``docker pull`` prints only the message.
        """
        rules = self._rules.get(upstream_host)
        refusal = rules.refusal(repository) if rules is not None else None
        if refusal is not None:
            shown = display_name(upstream_host, repository, self._default_host)
            text = f"repository {shown} is refused by this proxy: it {refusal}"
            raise RegistryError(ErrorCode.DENIED, text, message=text)

    def allows(self, upstream_host: str, repository: str) -> bool:
        rules = self._rules.get(upstream_host)
        return rules is None or rules.refusal(repository) is None


# --- tag TTLs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TagTtlRule:
    repository: Glob
    tag: Glob
    seconds: float

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}={self.seconds:g}"


def parse_tag_ttl_rules(value: str) -> tuple[TagTtlRule, ...]:
    """``*:latest=60,library/*:[0-9]*=86400`` -> rules, in order (the first match wins)."""
    rules = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        pattern, equals, seconds = item.rpartition("=")
        repository, colon, tag = pattern.partition(":")
        if not equals or not colon:
            raise ValueError(
                f"{item!r}: expected REPOSITORY:TAG=SECONDS, "
                "e.g. *:latest=60 or library/*:1.*=86400"
            )
        try:
            ttl = float(seconds)
        except ValueError:
            raise ValueError(f"{item!r}: {seconds!r} is not a number of seconds") from None
        if not 0 <= ttl < float("inf"):
            raise ValueError(f"{item!r}: seconds must be a number >= 0")
        rules.append(
            TagTtlRule(Glob.parse(repository.strip()), Glob.parse(tag.strip(), tag=True), ttl)
        )
    if not rules:
        raise ValueError("expected comma-separated REPOSITORY:TAG=SECONDS rules, e.g. *:latest=60")
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class TagTtl:
    """How long a tag is trusted without asking the upstream."""

    default: float
    rules: tuple[TagTtlRule, ...] = ()
    default_host: str = "docker.io"

    def seconds(self, upstream_host: str, repository: str, tag: str) -> float:
        if not self.rules:
            return self.default
        name = display_name(upstream_host, repository, self.default_host)
        for rule in self.rules:
            if rule.repository.matches(name) and rule.tag.matches(tag):
                return rule.seconds
        return self.default
