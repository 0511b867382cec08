"""A token server in the manner of Docker Hub's ``auth.docker.io/token``.

It runs an aiohttp application on its own event loop in a background thread, so a synchronous
pytest fixture can start and stop it.  distribution (``docker-registry``) is configured to trust
the self-signed certificate written to :attr:`TokenServer.cert_path`; the tokens are RS256 JWTs
whose header carries that certificate in ``x5c``.

Endpoints:

* ``GET /token?service=S&scope=repository:NAME:pull[,push]`` (``scope`` may repeat, or be
  absent), with optional HTTP Basic credentials.  Answers
  ``{"token", "access_token", "expires_in", "issued_at"}``.
* ``POST /token`` with a form body (``grant_type=password``, ``username``, ``password``,
  ``service``, ``scope``), the OAuth2 flavour some clients use.

Wrong credentials get 401.  Anonymous requests get 401 too unless the server was made with
``allow_anonymous_pull=True``; then they are granted ``pull`` only.  Every request is recorded
(see :meth:`TokenServer.requests` and :meth:`TokenServer.count`).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from proxy.registry.credentials import basic_credentials

DEFAULT_SERVICE = "registry.docker.io"
DEFAULT_ISSUER = "registry-proxy-test-token-issuer"
REPOSITORY_ACTIONS = frozenset({"pull", "push", "delete", "*"})


@dataclass(frozen=True)
class Access:
    """One entry of a token's ``access`` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def as_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class TokenRequest:
    """What the token server saw and answered, for assertions."""

    method: str
    service: str | None
    scopes: tuple[str, ...]
    account: str | None  # the authenticated user, None for anonymous or rejected
    status: int
    granted: tuple[Access, ...] = field(default=())
    monotonic: float = field(default_factory=time.monotonic)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_scope(scope: str) -> Access | None:
    """``repository:library/golang:pull,push`` -> Access; None when malformed."""
    kind, sep, rest = scope.partition(":")
    if not sep:
        return None
    name, sep, actions = rest.rpartition(":")
    if not sep or not name:
        return None
    wanted = tuple(a for a in actions.split(",") if a)
    return Access(type=kind, name=name, actions=wanted)


class TokenServer:
    """Docker-Hub-like token server; ``start()`` / ``stop()`` from synchronous code."""

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str] | None = None,
        *,
        allow_anonymous_pull: bool = False,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        expires_in: int = 300,
        port: int = 0,
    ) -> None:
        self.workdir = workdir
        self.users: dict[str, str] = dict(users or {})
        self.allow_anonymous_pull = allow_anonymous_pull
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._failure_status: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._cert = self._make_certificate()
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self.cert_path = self.workdir / "token-issuer.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("token server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._ready.clear()
        self._startup_error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="token-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"token server did not start within {timeout} s")
        if self._startup_error is not None:
            raise RuntimeError("token server failed to start") from self._startup_error

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"token server thread did not stop within {timeout} s")
        self._thread = None
        self._loop = None
        # keep the port so that a restart answers at the same realm

    def __enter__(self) -> TokenServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        runner: web.AppRunner | None = None
        try:
            runner = loop.run_until_complete(self._start_site())
        except BaseException as exc:  # reported to start()
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _start_site(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/token", self._handle_get)
        app.router.add_post("/token", self._handle_post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = self._port if self._port is not None else self._requested_port
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._port = int(runner.addresses[0][1])
        return runner

    # ------------------------------------------------------------------ test controls

    def set_user(self, username: str, password: str) -> None:
        with self._lock:
            self.users[username] = password

    def remove_user(self, username: str) -> None:
        with self._lock:
            self.users.pop(username, None)

    def fail_with(self, status: int | None) -> None:
        """Answer every request with ``status`` (e.g. 503) until called with None."""
        with self._lock:
            self._failure_status = status

    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, *, granted_only: bool = False) -> int:
        """Number of token requests served so far (optionally only the 200 answers)."""
        with self._lock:
            if granted_only:
                return sum(1 for r in self._requests if r.status == 200)
            return len(self._requests)

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()

    # ------------------------------------------------------------------ tokens

    def _make_certificate(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    def issue_token(
        self, subject: str, service: str, access: Iterable[Access], now: int | None = None
    ) -> str:
        """A signed RS256 JWT, as distribution's token auth expects it."""
        issued = int(time.time()) if now is None else now
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": service,
            "exp": issued + self.expires_in,
            "nbf": issued,
            "iat": issued,
            "jti": secrets.token_hex(16),
            "access": [a.as_claim() for a in access],
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _grant(self, account: str | None, scopes: Iterable[str]) -> tuple[Access, ...]:
        granted: list[Access] = []
        for scope in scopes:
            wanted = parse_scope(scope)
            if wanted is None:
                continue
            if wanted.type == "repository":
                allowed = REPOSITORY_ACTIONS if account is not None else frozenset({"pull"})
            elif wanted.type == "registry" and account is not None:
                allowed = frozenset({"*"})
            else:
                allowed = frozenset()
            actions = tuple(a for a in wanted.actions if a in allowed)
            granted.append(Access(type=wanted.type, name=wanted.name, actions=actions))
        return tuple(granted)

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self._requests.append(entry)

    def _answer(
        self,
        method: str,
        service: str | None,
        scopes: tuple[str, ...],
        creds: tuple[str, str] | None,
    ) -> str:
        """A token for the request, or _Denied; records the request either way."""
        with self._lock:
            failure = self._failure_status
            users = dict(self.users)
            allow_anonymous = self.allow_anonymous_pull
        if failure is not None:
            self._record(TokenRequest(method, service, scopes, None, failure))
            raise _Denied(failure, "injected failure")
        account: str | None = None
        if creds is None:
            if not allow_anonymous:
                self._record(TokenRequest(method, service, scopes, None, 401))
                raise _Denied(401, "authentication required", self.realm)
        elif users.get(creds[0]) != creds[1]:
            self._record(TokenRequest(method, service, scopes, None, 401))
            raise _Denied(401, "incorrect username or password", self.realm)
        else:
            account = creds[0]
        granted = self._grant(account, scopes)
        token = self.issue_token(account or "", service or self.service, granted)
        self._record(TokenRequest(method, service, scopes, account, 200, granted))
        return token

    def _body(self, token: str) -> dict[str, Any]:
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }

    async def _handle_get(self, request: web.Request) -> web.Response:
        service = request.query.get("service")
        scopes = tuple(request.query.getall("scope", []))
        creds = basic_credentials(request.headers.get("Authorization"))
        try:
            token = self._answer("GET", service, scopes, creds)
        except _Denied as denied:
            return denied.response()
        return web.json_response(self._body(token))

    async def _handle_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        service = _form_str(form.get("service"))
        scopes = tuple(s for s in (_form_str(form.get("scope")) or "").split(" ") if s)
        if _form_str(form.get("grant_type")) != "password":
            self._record(TokenRequest("POST", service, scopes, None, 400))
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        username = _form_str(form.get("username"))
        password = _form_str(form.get("password")) or ""
        creds = (username, password) if username is not None else None
        try:
            token = self._answer("POST", service, scopes, creds)
        except _Denied as denied:
            return denied.response()
        body = self._body(token)
        body["scope"] = " ".join(scopes)
        return web.json_response(body)


class _Denied(Exception):
    def __init__(self, status: int, detail: str, basic_realm: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.basic_realm = basic_realm

    def response(self) -> web.Response:
        headers = {}
        if self.basic_realm is not None:
            headers["WWW-Authenticate"] = f'Basic realm="{self.basic_realm}"'
        return web.json_response({"details": self.detail}, status=self.status, headers=headers)


def _form_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
