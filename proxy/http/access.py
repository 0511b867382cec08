"""Who may use the proxy: client networks and credentials.

Off by default (a laptop). In production the proxy holds a Docker Hub credential, so an open proxy
would let anyone spend the account's quota. Two controls, both optional, combined with AND:

- Networks: ``PROXY_ALLOW_CIDRS`` lists the client networks that may connect at all (403 DENIED
  otherwise). Behind a load balancer the peer is the balancer, so ``X-Forwarded-For`` is used, but
  only when the peer is in ``PROXY_TRUSTED_PROXIES`` (anyone can send that header), and only the
  entry our own proxies added: ``PROXY_TRUSTED_HOPS`` (1: one load balancer) entries from the
  right. Everything left of it was written by the client and proves nothing, even when it names
  an address inside a trusted range (clients may live in the same VPC as the load balancer).
- Credentials: with ``PROXY_AUTH_HTPASSWD`` (bcrypt entries) and/or ``PROXY_AUTH_TOKENS`` set,
  requests need ``Authorization: Basic`` (``docker login proxy.host``; a static token works as the
  password with any user name) or ``Authorization: Bearer <token>``; 401 with a Basic challenge
  otherwise. Docker daemons never send a mirror its own login, so mirror clients (CodeBuild) are
  let in by network instead: ``PROXY_ANONYMOUS_CIDRS`` need no credentials.

Operator endpoints (``/metrics``, ``/status``, the status page ``/`` and ``/ui``): with
``PROXY_OPERATOR_CIDRS`` set, only clients from those networks, or with a valid login, may read
them (403 DENIED otherwise).

The health endpoints stay open for load balancer checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

import bcrypt
import cachetools
import structlog
from aiohttp import web

from proxy.config import Network
from proxy.http.errors import HttpError
from proxy.registry.credentials import basic_credentials
from proxy.registry.errors import ErrorCode, RegistryError

log = structlog.get_logger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

REALM = "registry-proxy"
# bcrypt costs ~50-300 ms by design; a docker pull sends credentials on every request, so a
# verified (user, password) pair is remembered for a while (by hash, never in clear).
VERIFIED_TTL = 300.0


@dataclass(slots=True)
class AccessPolicy:
    allow: tuple[Network, ...] = ()
    anonymous: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    trusted_hops: int = 1
    operators: tuple[Network, ...] = ()
    users: dict[str, bytes] = field(default_factory=dict)
    tokens: frozenset[str] = frozenset()
    _verified: cachetools.TTLCache[bytes, bool] = field(
        default_factory=lambda: cachetools.TTLCache(10_000, VERIFIED_TTL)
    )

    @property
    def requires_credentials(self) -> bool:
        return bool(self.users or self.tokens)

    @property
    def enabled(self) -> bool:
        return bool(self.allow) or self.requires_credentials or bool(self.operators)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> Address | None:
        """The client's address: the peer, or from X-Forwarded-For when the peer is trusted.

        Each trusted proxy appends the address it received the request from, so the client is
        exactly ``trusted_hops`` entries from the right; entries further left came from the
        client itself. Fewer entries than hops: the leftmost, the first address a proxy of ours
        saw.
        """
        address = _address(peer)
        if address is None or not forwarded_for or not _within(address, self.trusted_proxies):
            return address
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        return _address(hops[-min(self.trusted_hops, len(hops))])

    async def check(self, request: web.BaseRequest, *, operator: bool = False) -> None:
        """Raise 403 DENIED or 401 UNAUTHORIZED unless the request may go on. ``operator``:
        the request is for an operator endpoint (``PROXY_OPERATOR_CIDRS`` applies)."""
        address = self.client_address(request.remote, forwarded_for(request))
        if self.operators and operator:
            await self._check_operator(address, request.headers.get("Authorization"))
            return
        if self.allow and (address is None or not _within(address, self.allow)):
            raise RegistryError(ErrorCode.DENIED, f"client address {address} is not allowed")
        if not self.requires_credentials:
            return
        if address is not None and _within(address, self.anonymous):
            return
        if not await self._authenticated(request.headers.get("Authorization")):
            raise HttpError(
                ErrorCode.UNAUTHORIZED,
                "log in to this registry (docker login) with a proxy user or token",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )

    async def _check_operator(self, address: Address | None, authorization: str | None) -> None:
        """Operator endpoints: an operator network, or a valid login when logins are set up."""
        if address is not None and _within(address, self.operators):
            return
        if self.requires_credentials and await self._authenticated(authorization):
            return
        raise RegistryError(
            ErrorCode.DENIED, f"client address {address} may not read operator endpoints"
        )

    async def _authenticated(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            return self._token_ok(credentials.strip())
        basic = basic_credentials(header)
        if basic is None:
            return False
        user, password = basic
        if self._token_ok(password):
            return True
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if key in self._verified:
            return True
        ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if ok:
            self._verified[key] = True
        return ok

    def _token_ok(self, candidate: str) -> bool:
        return any(hmac.compare_digest(candidate.encode(), t.encode()) for t in self.tokens)


def forwarded_for(request: web.BaseRequest) -> str | None:
    """Every ``X-Forwarded-For`` line of the request, joined in order into one list.

    A header sent on several lines is one list (RFC 9110, section 5.3). Some fronts append to the
    client's line (the ALB), others add a line of their own (HAProxy's ``option forwardfor``):
    reading only the first line would take the client's own claim for the balancer's entry.
    """
    lines = request.headers.getall("X-Forwarded-For", ())
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ", ".join(lines)


def _address(value: str | None) -> Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def _within(address: Address, networks: Iterable[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def codebuild_ranges(ip_ranges: dict[str, object], region: str) -> list[str]:
    """CodeBuild's published address ranges in ``region`` from AWS's ip-ranges.json."""
    ranges: list[str] = []
    for key, address_key in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        entries = ip_ranges.get(key, [])
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if (
                isinstance(entry, dict)
                and entry.get("service") == "CODEBUILD"
                and entry.get("region") == region
                and isinstance(entry.get(address_key), str)
            ):
                ranges.append(entry[address_key])
    return sorted(
        set(ranges), key=lambda n: (ipaddress.ip_network(n).version, ipaddress.ip_network(n))
    )
