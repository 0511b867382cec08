"""The upstream registry for end-to-end tests: CNCF distribution (``docker-registry serve``).

It stands in for Docker Hub: filesystem storage in a temp dir, token auth against
:class:`support.token_server.TokenServer`, and the access log switched on so tests can count
the requests the proxy sent upstream.

distribution 2.8 writes its access log to **stdout**, one line per completed request, in the
Apache combined format (gorilla/handlers: remote, ident, user, [time], "METHOD TARGET PROTO",
status, bytes written, "referer", "user agent")::

    127.0.0.1 - - [22/Nov/2026:15:57:45 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "skopeo/1.9.3"

and its own structured (logrus text) log to **stderr**.  They go to ``access.log`` and
``registry.log`` in the work dir.  A line is written once the response has been sent, so to
count everything a client did, call :meth:`Distribution.sync` first: it sends a marker request
and waits until its line shows up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.managed_process import LoopbackServer
from support.token_server import TokenServer

ACCESS_LINE = re.compile(
    r"^(?P<remote>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]*)\] "
    r'"(?P<method>[A-Z]+) (?P<target>\S+) (?P<proto>[^"]*)" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
)
SYNC_QUERY = "harness-sync"

BLOB_PATH = r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$"
MANIFEST_PATH = r"^/v2/.+/manifests/[^/]+$"

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclass(frozen=True)
class AccessLogEntry:
    method: str
    path: str  # without the query string
    query: str
    status: int
    size: int
    agent: str
    raw: str


def parse_access_line(line: str) -> AccessLogEntry | None:
    match = ACCESS_LINE.match(line.strip())
    if match is None:
        return None
    target = match["target"]
    path, _, query = target.partition("?")
    size = match["size"]
    return AccessLogEntry(
        method=match["method"],
        path=urllib.parse.unquote(path),
        query=query,
        status=int(match["status"]),
        size=0 if size == "-" else int(size),
        agent=match["agent"],
        raw=line.rstrip("\n"),
    )


class Distribution(LoopbackServer):
    """``docker-registry serve`` on 127.0.0.1; start/stop/restart from synchronous code.

    The port and storage survive :meth:`stop` / :meth:`start`, so a stopped upstream comes
    back with the same content at the same address.
    """

    name = "docker-registry"

    def __init__(
        self,
        workdir: Path,
        token_server: TokenServer | None = None,
        *,
        binary: str = "docker-registry",
        port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        # The access log is distribution's stdout, its own log its stderr.
        super().__init__(workdir, workdir / "access.log", workdir / "registry.log", port=port)
        self.token_server = token_server
        self.binary = binary
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.access_log_path = self.stdout_path
        self.log_path = workdir / "registry.log"
        self._extra_config = dict(extra_config or {})
        self._secret = secrets.token_hex(16)
        self._sync_counter = 0
        self.storage_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ lifecycle

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": self._secret},
        }
        if self.token_server is not None:
            cfg["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.cert_path),
                }
            }
        for key, value in self._extra_config.items():
            cfg[key] = value
        return cfg

    def command(self) -> list[str]:
        return [self.binary, "serve", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)  # breaks distribution's S3 driver; harmless to drop
        return env

    def prepare(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def readiness(self) -> str | None:
        try:
            status, headers, _ = self.request("GET", "/v2/", timeout=2.0)
        except OSError as exc:
            return repr(exc)
        if "docker-distribution-api-version" in headers:
            return None
        return f"HTTP {status} without Docker-Distribution-Api-Version"

    # ------------------------------------------------------------------ access log

    def access_log(self) -> list[AccessLogEntry]:
        """Every request distribution logged so far, marker requests of :meth:`sync` excluded."""
        if not self.access_log_path.exists():
            return []
        entries = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            entry = parse_access_line(line)
            if entry is not None and not entry.query.startswith(SYNC_QUERY + "="):
                entries.append(entry)
        return entries

    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of each request seen so far."""
        return [(e.method, e.path) for e in self.access_log()]

    def mark(self) -> int:
        """A position in the access log; pass it as ``since=`` to look only at later requests."""
        self.sync()
        return len(self.access_log())

    def entries(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        *,
        since: int = 0,
        status: int | None = None,
    ) -> list[AccessLogEntry]:
        pattern = re.compile(path_regex) if path_regex is not None else None
        return [
            e
            for e in self.access_log()[since:]
            if (method is None or e.method == method)
            and (pattern is None or pattern.search(e.path))
            and (status is None or e.status == status)
        ]

    def count(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        *,
        since: int = 0,
        status: int | None = None,
    ) -> int:
        """Requests with this method (None: any) whose path matches ``path_regex`` (search)."""
        return len(self.entries(method, path_regex, since=since, status=status))

    def blob_gets(self, *, since: int = 0) -> dict[str, int]:
        """``{digest: number of GETs}`` for blob GETs since the mark."""
        counts: dict[str, int] = {}
        for e in self.entries("GET", BLOB_PATH, since=since):
            digest = e.path.rsplit("/", 1)[1]
            counts[digest] = counts.get(digest, 0) + 1
        return counts

    def sync(self, timeout: float = 10.0) -> None:
        """Wait until every request completed before this call is in the access log.

        Sends a marker request and waits for its line; distribution logs a request after its
        response is written, so earlier completed requests are logged by then.
        """
        if not self.running:
            return  # a stopped registry logs nothing more
        self._sync_counter += 1
        marker = f"{SYNC_QUERY}={self._sync_counter}-{secrets.token_hex(4)}"
        with suppress(OSError):
            self.request("GET", f"/v2/?{marker}", timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.access_log_path.read_text(errors="replace"):
                return
            time.sleep(0.02)
        raise RuntimeError(f"access log line for {marker} did not appear within {timeout} s")

    # ------------------------------------------------------------------ direct HTTP

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One plain HTTP request; returns (status, lower-cased headers, body), never raises
        for HTTP error statuses."""
        req = urllib.request.Request(self.url + path, method=method, headers=dict(headers or {}))
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status, _lower(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, _lower(err.headers.items()), err.read()

    def token(self, repository: str, actions: str = "pull") -> str:
        """A bearer token for ``repository`` fetched from the token server with the first
        configured user's credentials (anonymous if there is none)."""
        ts = self.token_server
        if ts is None:
            raise RuntimeError("this registry runs without token auth")
        query = urllib.parse.urlencode(
            {"service": ts.service, "scope": f"repository:{repository}:{actions}"}
        )
        req = urllib.request.Request(f"{ts.realm}?{query}")
        if ts.users:
            user, password = next(iter(ts.users.items()))
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {basic}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
        token: str = body["token"]
        return token

    def _auth_headers(self, repository: str) -> dict[str, str]:
        if self.token_server is None:
            return {}
        return {"Authorization": f"Bearer {self.token(repository)}"}

    def manifest(self, repository: str, reference: str) -> tuple[str, str, bytes]:
        """GET a manifest: (Docker-Content-Digest, media type, raw bytes).  Goes into the
        access log like any request: take marks after it."""
        status, headers, body = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT, **self._auth_headers(repository)},
        )
        if status != 200:
            raise RuntimeError(f"GET manifest {repository}:{reference}: HTTP {status} {body!r}")
        digest = headers.get("docker-content-digest", "")
        if digest != "sha256:" + hashlib.sha256(body).hexdigest():
            raise RuntimeError(f"upstream digest header {digest!r} does not match the body")
        return digest, headers.get("content-type", ""), body

    def head_manifest(self, repository: str, reference: str) -> str:
        """HEAD a manifest and return its Docker-Content-Digest."""
        status, headers, _ = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT, **self._auth_headers(repository)},
        )
        if status != 200:
            raise RuntimeError(f"HEAD manifest {repository}:{reference}: HTTP {status}")
        return headers["docker-content-digest"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _lower(items: Iterator[tuple[str, str]] | Any) -> dict[str, str]:
    return {k.lower(): v for k, v in items}
