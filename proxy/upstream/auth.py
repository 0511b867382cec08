"""Registry token authentication (the Docker Hub flow) with a per-scope token cache.

A registry that wants a token answers 401 with
``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``. We then GET the realm with
``service`` and ``scope`` (Basic credentials of the proxy's account, or none), and send the token as
``Authorization: Bearer``. Tokens are cached per scope until shortly before they expire, and the
realm is remembered so that later scopes skip the first 401 round trip.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from proxy.concurrency.singleflight import SingleFlight
from proxy.ops.logs import count_upstream_request
from proxy.registry.credentials import basic_authorization
from proxy.upstream.errors import UpstreamDenied, UpstreamInvalid, UpstreamUnavailable

_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_QUOTED_PAIR_RE = re.compile(r"\\(.)")

DEFAULT_EXPIRES_IN = 60  # seconds; what the token spec says when the server gives none


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower-case: "bearer" or "basic"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse a WWW-Authenticate header with a single challenge.

    Parameter names are case-insensitive; a quoted value may hold commas and ``=``, and its
    backslash escapes (RFC 9110 quoted-pair) stand for the character after the backslash.
    """
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {
        m.group(1).lower(): _QUOTED_PAIR_RE.sub(r"\1", m.group(2))
        if m.group(2) is not None
        else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


@dataclass(slots=True)
class _Token:
    value: str
    valid_until: float


class TokenAuth:
    """Supplies the Authorization header for a scope, fetching and caching tokens."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        username: str | None,
        password: str,
        timeout: aiohttp.ClientTimeout,
        *,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self._session = session
        # Hears the token service's 401/403: the account itself was refused.
        self._on_refused = on_refused
        self._username = username
        self._password = password
        self._timeout = timeout
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._fetching: SingleFlight[_Token] = SingleFlight()

    def cached(self, scope: str) -> str | None:
        """The header to send for ``scope`` without any network round trip, if we have one."""
        if self._challenge is None:
            return None
        if self._challenge.scheme == "basic":
            return self._basic()
        token = self._tokens.get(scope)
        if token and token.valid_until > time.monotonic():
            return f"Bearer {token.value}"
        return None

    async def authorize(self, scope: str, challenge_header: str | None) -> str | None:
        """The header for ``scope`` after a 401 (or proactively once the realm is known)."""
        if challenge_header:
            challenge = parse_challenge(challenge_header)
            if challenge is not None and challenge.scheme in ("bearer", "basic"):
                self._challenge = challenge
                self._tokens.pop(scope, None)
        if self._challenge is None:
            return None
        if self._challenge.scheme == "basic":
            return self._basic()
        token = await self._token(scope)
        return f"Bearer {token.value}"

    def knows_realm(self) -> bool:
        return self._challenge is not None

    def forget(self, scope: str) -> None:
        self._tokens.pop(scope, None)

    def _basic(self) -> str | None:
        if self._username is None:
            return None
        return basic_authorization(self._username, self._password)

    async def _token(self, scope: str) -> _Token:
        token = self._tokens.get(scope)
        if token and token.valid_until > time.monotonic():
            return token
        # One token request per scope however many requests need it at once.
        return await self._fetching.run(scope, lambda: self._fetch_token(scope))

    async def _fetch_token(self, scope: str) -> _Token:
        assert self._challenge is not None
        params = dict(self._challenge.params)
        realm = params.pop("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise UpstreamInvalid(f"token realm is not an http(s) URL: {realm!r}")
        query = {"scope": scope}
        if "service" in params:
            query["service"] = params["service"]
        headers = {}
        if self._username is not None:
            headers["Authorization"] = basic_authorization(self._username, self._password)
        count_upstream_request()
        try:
            async with self._session.get(
                realm, params=query, headers=headers, timeout=self._timeout
            ) as response:
                if response.status in (401, 403):
                    if self._on_refused is not None:
                        self._on_refused(response.status)
                    raise UpstreamDenied(
                        f"token service refused the proxy's credentials ({response.status})",
                        status=401,
                        code="UNAUTHORIZED",
                    )
                if response.status != 200:
                    raise UpstreamUnavailable(
                        f"token service answered {response.status}", status=response.status
                    )
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamUnavailable(f"token service: {type(exc).__name__}: {exc}") from exc
        value = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise UpstreamInvalid("token service answered without a token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else DEFAULT_EXPIRES_IN
        margin = min(30.0, lifetime / 5)
        token = _Token(value, time.monotonic() + max(0.0, lifetime - margin))
        self._tokens[scope] = token
        return token
