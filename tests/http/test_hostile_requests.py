"""A hostile-request run against the proxy's whole HTTP surface.

Thousands of requests, generated from a fixed seed, go over raw sockets (so nothing normalises
them on the way: dot segments, encoded and doubled encodings, backslashes, NUL bytes, raw
non-UTF-8 bytes, broken header lines all reach the server as written) to an in-process proxy in
front of the fake Docker Hub. Mixed in are well-formed pulls whose answers are checked byte for
byte, so the noise is shown not to disturb real clients.

What must hold:

* every request is answered, and no answer is a 5xx: malformed input is the client's error (4xx);
  a valid request gets its 2xx/3xx;
* no read outside the cache: no thread of the process opens a file outside the cache directory
  while the requests are answered (a Python audit hook sees every ``open``); secret files planted
  above, beside and inside the cache never show up in any response, nor does /etc/passwd;
* the upstream only ever sees requests inside the registry grammar (a valid name, a tag or
  sha256 digest, the token endpoint, the CDN);
* nothing is written outside the cache, and the cache itself scans clean afterwards.

One run serves the whole module (the ``run`` fixture: a few seconds on a 2-core machine); each
invariant is a test of its own, so a failure names the one that broke.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import os
import random
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support.cache_scan import ScanReport, scan_directory
from support.fakehub import FakeHub, ImageInfo, IndexInfo, RecordedRequest
from support.proxy_app import ProxyFactory
from support.settings import settings_with

from proxy.config import Settings, StorageLocation
from proxy.http.app import create_app
from proxy.http.routes import SERVICES

SEED = 0x5EED_6006
PROBES = 3500
CONCURRENCY = 16
READ_TIMEOUT = 10.0
IDLE = 1.5  # seconds of silence before a half-close
RUN_BUDGET = 60.0  # seconds for the whole run (it takes a few on a 2-core machine)
MAX_RESPONSE = 8 * 1024 * 1024

HEX = "0123456789abcdef"

# --- the registry grammar the upstream may see ----------------------------------------------------

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
UPSTREAM_REGISTRY_PATH = re.compile(
    rf"/v2/|/token|/v2/{_NAME}/(?:manifests/(?:{_TAG}|{_DIGEST})|blobs/{_DIGEST}|tags/list)"
)
UPSTREAM_CDN_PATH = re.compile(rf"/cdn/{_DIGEST}")
UPSTREAM_QUERY_KEYS = {"service", "scope", "sig", "n", "last"}

# --- building blocks of hostile requests ----------------------------------------------------------

TRAVERSAL = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "%252e%252e",
    "%25252e%25252e",
    "..%2f",
    "%2f..",
    "..%5c",
    "..\\",
    "\\..\\",
    "%c0%ae%c0%ae",
    "%e0%80%ae",
    "%u002e%u002e",
    "\uff0e\uff0e",
    "..;",
    "....//",
    "..././",
    "%00",
    "\x00",
    "..%00",
    "%2f",
    "%2F",
    "%252f",
    "%5c",
    "%255c",
    "//",
    "~",
    "%7e",
    "%20",
    "\t",
    "%0d%0a",
    "?",
    "%3f",
    "#",
    "%23",
    ";",
    "%3b",
]
SEPARATORS = ["/", "%2f", "%2F", "%252f", "\\", "%5c", "", "/./", "//"]
TARGETS = [
    "secret.txt",
    "etc/passwd",
    "../../../../../../../../etc/passwd",
    "data/secret.txt",
    "data/blobs/secret.txt",
    "meta",
    "tmp",
    "spool",
    "blobs/sha256",
    "proc/self/environ",
]
UNICODE = [
    "gölang",
    "ｇｏｌａｎｇ",  # fullwidth  # noqa: RUF001
    "\u202egnalog",
    "\ufeffgolang",
    "\U0001d524olang",
    "\u0130stanbul",
    "stra\u00dfe",
    "\u2215etc\u2215passwd",  # division slash
    "\u2024\u2024",  # one dot leader
    "\udcff\udcfe",  # raw 0xff 0xfe bytes (not UTF-8)
    "\udcc0\udcae",  # overlong '.'
    "%ff%fe",
    "%c3%b6",
]
METHODS = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "MKCOL",
    "LOCK",
    "M-SEARCH",
    "get",
    "Get",
    "GET\x00",
    "G\tET",
    "X" * 200,
    "H\u00c9AD",
    "",
]
RANGES = [
    "bytes=-",
    "bytes=",
    "bytes=0-",
    "bytes=0-0",
    "bytes=-0",
    "bytes=-1",
    "bytes=5-1",
    "bytes=99999999999999999999-",
    "bytes=0-99999999999999999999",
    "bytes=-99999999999999999999",
    "bytes=9223372036854775807-",
    "bytes=0-9223372036854775807",
    "bytes=-9223372036854775808",
    "bytes=18446744073709551615-18446744073709551616",
    "bytes=9999999999999999999-",
    "bytes=-9999999999999999999",
    "bytes=0-1,2-3",
    "bytes=0-0,-1",
    ",".join(["bytes=0-1", *["1-2"] * 300]),
    "bytes= 0-1",
    "bytes=0 -1",
    "bytes=--1",
    "bytes=-5-",
    "bytes=1e3-",
    "bytes=0x10-",
    "bytes=+1-2",
    "bytes=-+1",
    "bytes=\u0663-\u0665",  # Arabic-Indic digits
    "bytes=\uff11-",  # fullwidth digit
    "items=0-1",
    "Bytes=0-1",
    "bytes=0-1;q=1",
    "bytes=0-" + "1" * 5000,
    "bytes=" + "-" * 1000,
    "bytes=\x00-1",
    "bytes=1-\x00",
    "\x00",
    "bytes=-1\r",
]
ACCEPTS = [
    "",
    "*/*",
    "*/*;q=-1",
    "application/*",
    "text/html",
    ";;;,,,;",
    "application/vnd.oci.image.index.v1+json;q=abc",
    "application/vnd.oci.image.manifest.v1+json; q=0",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON",
    "application/json, " * 500,
    "a" * 8000,
    "application/vnd.oci.image.index.v1+json\x00",
    "application/vnd.oci.\u00efmage.index.v1+json",
    "\udcff\udcfe",
]
NS_VALUES = [
    "docker.io",
    "DOCKER.IO",
    "registry-1.docker.io",
    "evil.example",
    "127.0.0.1",
    "localhost:5000",
    "169.254.169.254",
    "../../etc",
    "docker.io/../evil",
    "docker.io%2f..%2fevil",
    "docker.io%00evil",
    "",
    "\u0435vil.example",  # Cyrillic e
    "x" * 5000,
]
PAGE_VALUES = [
    "0",
    "-1",
    "1",
    "10000",
    "10001",
    "99999999999999999999",
    "1e3",
    "0x10",
    " 5",
    "5 ",
    "+5",
    "\u0665",
    "",
    "abc",
    "NaN",
    "1" * 5000,
    "\u00b2",  # superscript two: isdigit() but not int()
]
LAST_VALUES = [
    "",
    "1.22",
    "../../etc/passwd",
    "..",
    "%2e%2e",
    "-bad",
    "a" * 129,
    "a" * 5000,
    "\u00e9",
    "%00",
    "zzz",
    "sha256:" + "0" * 64,
]
BAD_DIGEST_ALGOS = ["sha512", "SHA256", "Sha256", "md5", "sha1", "sha384", "sha256+b64", "", "a"]


@dataclass(frozen=True)
class Expected:
    """What a well-formed control request must get: this status and exactly these bytes."""

    status: int
    body_sha256: str | None


@dataclass(frozen=True)
class Probe:
    category: str
    raw: bytes
    expected: Expected | None = None
    incomplete: bool = False
    """Not a whole request: the server may wait for the rest, and close without answering."""


@dataclass
class Answer:
    probe: Probe
    status: int | None
    headers: dict[str, str]
    body: bytes
    raw: bytes
    error: str | None = None
    closed: bool = False
    """The server closed the connection."""
    waited: bool = False
    """The server waited for more of the request; the client half-closed the connection."""


# --- the content the fake upstream serves ---------------------------------------------------------


@dataclass
class Content:
    golang: ImageInfo
    alpine: IndexInfo
    uncached_blob: str
    uncached_data: bytes
    warm_blob: str
    warm_data: bytes


def populate(hub: FakeHub) -> Content:
    rng = random.Random(SEED)
    golang = hub.add_image(
        "library/golang",
        "1.22",
        [rng.randbytes(300_000), rng.randbytes(40_000), b"small layer"],
    )
    alpine = hub.add_multiarch_image("library/alpine", "3.20", oci=True)
    for tag in ("1.21", "1.20", "latest", "bookworm"):
        hub.set_tag("library/golang", tag, golang.digest)
    uncached = rng.randbytes(200_000)
    uncached_digest = hub.add_blob(uncached, repo="library/golang")
    return Content(
        golang=golang,
        alpine=alpine,
        uncached_blob=uncached_digest,
        uncached_data=uncached,
        warm_blob=golang.layer_digests[0],
        warm_data=golang.layers[0],
    )


# --- generating requests --------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode(text: str) -> bytes:
    """UTF-8, with lone surrogates standing for raw (non-UTF-8) bytes."""
    return text.encode("utf-8", "surrogateescape")


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    version: str = "HTTP/1.1",
    host: bool = True,
    eol: str = "\r\n",
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append("Host: registry.test")
    lines += [f"{name}: {value}" for name, value in headers or []]
    lines.append("Connection: close")
    return _encode(eol.join(lines) + eol + eol) + body


class Generator:
    """Seeded generator of hostile requests; ``probes(n)`` gives the same list every run."""

    def __init__(self, content: Content, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.content = content

    def choice(self, items: list[str]) -> str:
        return self.rng.choice(items)

    def attack(self) -> str:
        parts = [self.choice(TRAVERSAL) for _ in range(self.rng.randint(1, 4))]
        sep = self.choice(SEPARATORS)
        return sep.join(parts) + sep + self.choice(TARGETS)

    def digest(self) -> str:
        hex64 = "".join(self.rng.choice(HEX) for _ in range(64))
        return f"sha256:{hex64}"

    def bad_digest(self) -> str:
        hex64 = self.digest().removeprefix("sha256:")
        forms = [
            f"{self.choice(BAD_DIGEST_ALGOS)}:{hex64}",
            f"sha256:{hex64.upper()}",
            f"sha256:{hex64[: self.rng.randint(0, 63)]}",
            f"sha256:{hex64}{'0' * self.rng.randint(1, 64)}",
            f"sha256:{hex64[:-2]}%2e%2e",
            f"sha256:{hex64}/..",
            f"sha256:{hex64}%2f..%2f..%2fsecret.txt",
            f"sha256:../../{self.choice(TARGETS)}",
            f"sha256:{hex64[:32]}\x00{hex64[32:]}",
            f"sha256::{hex64}",
            f"sha256{hex64}",
            f":{hex64}",
            f"sha256:{hex64[:63]}g",
            f"sha512:{hex64 * 2}",
            f"sha256:{' ' * 64}",
            f"sha256:{hex64}\u00e9",
            "sha256:",
            "sha256",
            ":",
            f"{self.content.warm_blob}/../{self.content.uncached_blob}",
            f"{self.content.warm_blob}%2f..%2f..",
        ]
        return self.choice(forms)

    def name(self) -> str:
        forms = [
            "library/golang",
            "golang",
            "docker.io/library/golang",
            f"library/{self.choice(UNICODE)}",
            self.choice(UNICODE),
            f"library/golang/{self.attack()}",
            f"{self.attack()}/library/golang",
            f"library/{self.attack()}",
            "a" * self.rng.choice([254, 255, 256, 4000]),
            "/".join(["a"] * self.rng.choice([100, 128, 129, 2000])),
            "Library/Golang",
            "library//golang",
            "library/golang/",
            "/library/golang",
            "library/-golang",
            "library/golang-",
            "library/go..lang",
            "library/go___lang",
            "evil.example/library/golang",
            "169.254.169.254/latest",
            "localhost:5000/x",
            "library/golang%2fmanifests%2f1.22",
            "library%2fgolang",
            "library/golang\x00",
        ]
        return self.choice(forms)

    def reference(self) -> str:
        forms = [
            "1.22",
            "latest",
            self.content.golang.digest,
            self.attack(),
            self.bad_digest(),
            "a" * self.rng.choice([128, 129, 5000]),
            "-bad",
            ".hidden",
            "1.22%00",
            "1.22/../1.21",
            self.choice(UNICODE),
            "",
        ]
        return self.choice(forms)

    # Each category returns one probe.

    def path_traversal(self) -> Probe:
        endpoint = self.choice(["manifests", "blobs", "tags/list", "blobs/uploads", "x", ""])
        forms = [
            f"/v2/{self.name()}/{endpoint}/{self.reference()}",
            f"/v2/{self.name()}/manifests/{self.attack()}",
            f"/v2/library/golang/blobs/{self.attack()}",
            f"/v2/library/golang/blobs/{self.content.warm_blob}/{self.attack()}",
            f"/v2/{self.attack()}",
            f"/{self.attack()}",
            f"/{self.attack()}/v2/library/golang/manifests/1.22",
            f"/v2/{self.attack()}/manifests/1.22",
            f"/healthz/{self.attack()}",
            f"/metrics/{self.attack()}",
            f"/status{self.choice(SEPARATORS)}{self.attack()}",
            f"/v2/library/golang/tags/list/{self.attack()}",
            f"/v2/{self.name()}/tags/list",
        ]
        method = self.choice(["GET", "GET", "HEAD"])
        return Probe("path", request_bytes(method, self.choice(forms)))

    def digest_probe(self) -> Probe:
        what = self.choice(["blobs", "manifests"])
        method = self.choice(["GET", "HEAD"])
        target = f"/v2/{self.choice(['library/golang', 'golang'])}/{what}/{self.bad_digest()}"
        return Probe("digest", request_bytes(method, target))

    def range_probe(self) -> Probe:
        digest = self.choice([self.content.warm_blob, self.content.uncached_blob, self.digest()])
        ranges = [("Range", self.choice(RANGES)) for _ in range(self.rng.choice([1, 1, 1, 2, 50]))]
        method = self.choice(["GET", "GET", "GET", "HEAD"])
        return Probe("range", request_bytes(method, f"/v2/library/golang/blobs/{digest}", ranges))

    def method_probe(self) -> Probe:
        target = self.choice(
            [
                "/v2/",
                "/v2/library/golang/manifests/1.22",
                f"/v2/library/golang/blobs/{self.content.warm_blob}",
                "/v2/library/golang/blobs/uploads/",
                "/v2/library/golang/tags/list",
                "/healthz",
                "/metrics",
                "*",
            ]
        )
        body = b""
        headers: list[tuple[str, str]] = []
        if self.rng.random() < 0.3:
            body = self.rng.randbytes(self.rng.choice([1, 100, 70_000]))
            headers.append(("Content-Length", str(len(body))))
        return Probe("method", request_bytes(self.choice(METHODS), target, headers, body=body))

    def header_probe(self) -> Probe:
        target = self.choice(
            ["/v2/", "/v2/library/golang/manifests/1.22", f"/v2/golang/blobs/{self.digest()}"]
        )
        size = self.rng.choice([8191, 8200, 16_384, 65_536, 200_000])
        token = base64.b64encode(self.rng.randbytes(size)).decode()[:size]
        forms: list[tuple[list[tuple[str, str]], bool]] = [
            ([("X-Big", "a" * size)], True),
            ([("X" * size, "1")], True),
            ([("Authorization", f"Bearer {token}")], True),
            ([("Cookie", "c=" + "x" * size)], True),
            ([(f"X-H{i}", "v" * 100) for i in range(self.rng.choice([100, 1000, 5000]))], True),
            ([("Authorization", "Basic !!!not-base64")], True),
            ([("Authorization", "Basic " + base64.b64encode(b"\x00:\x00").decode())], True),
            ([("Authorization", "Bearer")], True),
            ([("X Bad", "1")], True),
            ([("", "empty name")], True),
            ([("X-Nul", "a\x00b")], True),
            ([("X-Cr", "a\rb")], True),
            ([("X-Fold", "a\r\n folded")], True),
            ([("X-\u00e9", "1")], True),
            ([("X-Raw", "\udcff\udcfe")], True),
            ([("Content-Length", "-1")], True),
            ([("Content-Length", "abc")], True),
            ([("Content-Length", "1"), ("Content-Length", "2")], True),
            ([("Content-Length", "99999999999999999999999")], True),
            ([("Transfer-Encoding", "chunked")], True),
            ([("Transfer-Encoding", "gzip, chunked")], True),
            ([("Transfer-Encoding", "chunked"), ("Content-Length", "5")], True),
            ([("Transfer-Encoding", "identity")], True),
            ([("Expect", "100-continue")], True),
            ([("Upgrade", "websocket"), ("Connection", "Upgrade")], True),
            ([("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")], True),
            ([("X-Forwarded-For", "127.0.0.1, ../../etc")], True),
            ([("Host", "evil.example")], True),
            ([("Host", "a" * 9000)], True),
            ([], False),
            ([("Host", "")], False),
            ([("Accept-Encoding", "gzip;q=" + "9" * 1000)], True),
        ]
        headers, host = self.rng.choice(forms)
        body = b""
        if any(name == "Transfer-Encoding" for name, _ in headers):
            body = self.rng.choice([b"0\r\n\r\n", b"zz\r\nabc\r\n", b"5\r\nab", b"-1\r\n\r\n"])
        method = self.choice(["GET", "HEAD", "POST"])
        return Probe("header", request_bytes(method, target, headers, host=host, body=body))

    def accept_probe(self) -> Probe:
        reference = self.choice(["1.22", "3.20", self.content.golang.digest])
        repo = "library/alpine" if reference == "3.20" else "library/golang"
        accepts = [("Accept", self.choice(ACCEPTS)) for _ in range(self.rng.choice([1, 1, 3, 100]))]
        method = self.choice(["GET", "HEAD"])
        return Probe("accept", request_bytes(method, f"/v2/{repo}/manifests/{reference}", accepts))

    def query_probe(self) -> Probe:
        path = self.choice(
            [
                "/v2/library/golang/tags/list",
                "/v2/golang/tags/list",
                "/v2/library/golang/manifests/1.22",
                f"/v2/library/golang/blobs/{self.content.warm_blob}",
                "/v2/",
            ]
        )
        params = []
        for _ in range(self.rng.randint(1, 4)):
            key = self.choice(["ns", "n", "last", "ns", "n", "x", "", "n[]", "%6e"])
            if key == "ns":
                value = self.choice(NS_VALUES)
            elif key == "n":
                value = self.choice(PAGE_VALUES)
            else:
                value = self.choice(LAST_VALUES)
            params.append(f"{key}={value}" if self.rng.random() < 0.9 else key)
        sep = self.choice(["&", "&", ";", "&&"])
        return Probe("query", request_bytes("GET", f"{path}?{sep.join(params)}"))

    def request_line_probe(self) -> Probe:
        target = "/v2/library/golang/manifests/1.22"
        whole = [
            request_bytes("GET", target, version="HTTP/1.0"),
            request_bytes("GET", target, version="HTTP/2.0"),
            request_bytes("GET", target, version="HTTP/9.9"),
            request_bytes("GET", target, version="HTTP/1.1 extra"),
            request_bytes("GET", target, version="http/1.1"),
            request_bytes("GET", target, version=""),
            request_bytes("GET", target, eol="\n"),
            request_bytes("GET", f" {target}"),
            request_bytes("GET", "http://evil.example/v2/library/golang/manifests/1.22"),
            request_bytes("GET", "http://127.0.0.1:1/v2/"),
            request_bytes("GET", "*"),
            request_bytes("OPTIONS", "*"),
            request_bytes("CONNECT", "evil.example:443"),
            request_bytes("GET", "v2/library/golang/manifests/1.22"),
            request_bytes("GET", "?x=1"),
            request_bytes("GET", "/v2/#fragment"),
            request_bytes("GET", "/v2/" + "a/" * 6000),
            request_bytes("GET", "/v2/library/golang/manifests/1.22\r\nX-Injected: 1"),
            b"GET /v2/\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /../../etc/passwd HTTP/1.1\r\n\r\n",
        ]
        partial = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS hello
            self.rng.randbytes(self.rng.choice([1, 16, 512, 9000])),
            b"\r\n\r\n\r\n",
            b"GET /v2/library/golang/manifests/1.22 HTTP/1.1\r\nHost: x\r\n",
        ]
        if self.rng.random() < 0.75:
            return Probe("request-line", self.rng.choice(whole))
        return Probe("request-line", self.rng.choice(partial), incomplete=True)

    def control(self) -> Probe:
        """A well-formed pull request whose answer is known exactly."""
        content = self.content
        golang = content.golang
        accept = [
            (
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json, "
                "application/vnd.oci.image.index.v1+json",
            )
        ]
        forms = [
            Probe(
                "control",
                request_bytes("GET", "/v2/library/golang/manifests/1.22", accept),
                Expected(200, _sha(golang.manifest)),
            ),
            Probe(
                "control",
                request_bytes("GET", f"/v2/golang/manifests/{golang.digest}?ns=docker.io", accept),
                Expected(200, _sha(golang.manifest)),
            ),
            Probe(
                "control",
                request_bytes("GET", f"/v2/library/golang/blobs/{content.warm_blob}"),
                Expected(200, _sha(content.warm_data)),
            ),
            Probe(
                "control",
                request_bytes("GET", f"/v2/library/golang/blobs/{content.uncached_blob}"),
                Expected(200, _sha(content.uncached_data)),
            ),
            Probe(
                "control",
                request_bytes(
                    "GET",
                    f"/v2/library/golang/blobs/{content.warm_blob}",
                    [("Range", "bytes=100-1099")],
                ),
                Expected(206, _sha(content.warm_data[100:1100])),
            ),
            Probe(
                "control",
                request_bytes(
                    "GET",
                    f"/v2/library/golang/blobs/{golang.config_digest}",
                    [("Range", "bytes=-7")],
                ),
                Expected(206, _sha(golang.config[-7:])),
            ),
            Probe(
                "control",
                request_bytes("HEAD", f"/v2/library/golang/blobs/{content.warm_blob}"),
                Expected(200, None),
            ),
            Probe("control", request_bytes("GET", "/v2/"), Expected(200, None)),
            Probe(
                "control",
                request_bytes("GET", "/v2/library/alpine/manifests/3.20", accept),
                Expected(200, _sha(content.alpine.manifest)),
            ),
        ]
        return self.rng.choice(forms)

    def probes(self, count: int) -> list[Probe]:
        categories: list[tuple[float, Callable[[], Probe]]] = [
            (0.25, self.path_traversal),
            (0.09, self.digest_probe),
            (0.12, self.range_probe),
            (0.08, self.method_probe),
            (0.12, self.header_probe),
            (0.08, self.accept_probe),
            (0.09, self.query_probe),
            (0.07, self.request_line_probe),
            (0.10, self.control),
        ]
        weights = [w for w, _ in categories]
        makers = [m for _, m in categories]
        return [self.rng.choices(makers, weights)[0]() for _ in range(count)]


# --- sending them ---------------------------------------------------------------------------------


def _split_head(raw: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """The first final (non-1xx) response's status, headers and the bytes after its head."""
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            return None, {}, b""
        lines = head.decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/\d\.\d (\d{3})(?: .*)?", lines[0])
        if match is None:
            return None, {}, b""
        status = int(match.group(1))
        if 100 <= status < 200:  # 100 Continue: the real answer follows
            raw = rest
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, rest


def parse_response(raw: bytes, *, head: bool) -> tuple[int | None, dict[str, str], bytes, bool]:
    """(status, headers, body, complete) of the first response in ``raw``."""
    status, headers, rest = _split_head(raw)
    if status is None:
        return None, {}, b"", False
    if head or status in (204, 304):
        return status, headers, b"", True
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, complete = _dechunk(rest)
        return status, headers, body, complete
    length = headers.get("content-length", "")
    if length.isdigit():
        return status, headers, rest[: int(length)], len(rest) >= int(length)
    return status, headers, rest, False  # delimited by the end of the connection


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    body = bytearray()
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(body), True
        body += data[:size]
        data = data[size + 2 :]
    return bytes(body), False


async def send(port: int, probe: Probe) -> Answer:
    """One request on its own connection; read until a whole response arrived.

    A request the server is still waiting to see the end of (an incomplete one, by design) gets
    a half-close after IDLE seconds of silence: then the server must answer or close.
    """
    head = probe.raw.startswith(b"HEAD ")
    raw = bytearray()
    complete = False
    closed = False
    eof_sent = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(probe.raw)
            await writer.drain()
        except ConnectionError:
            pass  # the server answered and closed before taking the whole request
        deadline = asyncio.get_running_loop().time() + READ_TIMEOUT
        while not complete and len(raw) < MAX_RESPONSE:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), min(IDLE, remaining))
            except TimeoutError:
                if probe.incomplete and not raw and not eof_sent and writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    eof_sent = True
                continue
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
            complete = parse_response(bytes(raw), head=head)[3]
    finally:
        writer.close()
    status, headers, body, complete = parse_response(bytes(raw), head=head)
    error = None
    if status is None:
        error = "closed without an HTTP response" if closed else f"no answer in {READ_TIMEOUT} s"
    return Answer(probe, status, headers, body, bytes(raw), error, closed=closed, waited=eof_sent)


async def run_probes(port: int, probes: list[Probe]) -> list[Answer]:
    queue = list(enumerate(probes))
    answers: list[Answer | None] = [None] * len(probes)

    async def worker() -> None:
        while queue:
            index, probe = queue.pop()
            answers[index] = await send(port, probe)

    async with asyncio.timeout(RUN_BUDGET):
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return [answer for answer in answers if answer is not None]


# --- watching every file the process opens ----------------------------------------------------

MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".typed")


class OpenRecorder:
    """Records, through a Python audit hook, every file any thread of this process opens.

    The in-process proxy reads the cache in worker threads: they fire the same ``open`` audit
    event as everything else. Audit hooks cannot be removed, so the hook is installed once and
    records only while a recorder is active.
    """

    active: OpenRecorder | None = None
    installed = False

    def __init__(self) -> None:
        self.paths: list[str] = []

    @classmethod
    def _hook(cls, event: str, args: tuple[object, ...]) -> None:
        recorder = cls.active
        if recorder is None or event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str | os.PathLike):
            recorder.paths.append(os.path.realpath(path))

    def __enter__(self) -> OpenRecorder:
        if not OpenRecorder.installed:
            sys.addaudithook(OpenRecorder._hook)
            OpenRecorder.installed = True
        OpenRecorder.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        OpenRecorder.active = None

    def outside(self, root: Path) -> list[str]:
        """Opened files that are neither under ``root`` nor Python modules being imported."""
        real_root = root.resolve()
        return sorted(
            {
                path
                for path in self.paths
                if not Path(path).is_relative_to(real_root) and not path.endswith(MODULE_SUFFIXES)
            }
        )

    def among(self, files: Iterable[Path]) -> list[str]:
        """Which of ``files`` were opened."""
        return sorted({os.path.realpath(f) for f in files} & set(self.paths))


# --- the sentinels --------------------------------------------------------------------------------


def plant_sentinels(cache_root: Path, content: Content) -> dict[Path, bytes]:
    """Secret files above, beside and inside the cache, where a traversal would look for them."""
    places = [
        cache_root.parent / "secret.txt",
        cache_root.parent.parent / "secret.txt",
        cache_root / "secret.txt",
        cache_root / "data" / "secret.txt",
        cache_root / "data" / "blobs" / "secret.txt",
        cache_root / "data" / "blobs" / "sha256" / "secret.txt",
        cache_root / "meta" / "secret.txt",
        cache_root / "tmp.txt",
        # Not the cache layout: a digest-named file outside data/ must never be served.
        cache_root / "blobs" / "sha256" / content.uncached_blob[7:9] / content.uncached_blob[7:],
        cache_root / "data" / content.uncached_blob[7:],
    ]
    planted = {}
    for place in places:
        place.parent.mkdir(parents=True, exist_ok=True)
        secret = f"SENTINEL-{secrets.token_hex(16)}".encode()
        place.write_bytes(secret)
        planted[place] = secret
    return planted


def tree(root: Path, skip: Path) -> dict[str, int]:
    """Every file under ``root`` except under ``skip``: path -> size."""
    return {
        str(path): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_relative_to(skip)
    }


def passwd_lines() -> list[bytes]:
    text = Path("/etc/passwd").read_text()
    return [line.encode() for line in text.splitlines() if line.strip()]


def describe(answer: Answer) -> str:
    request = answer.probe.raw[:300]
    reply = answer.raw[:300] if answer.raw else answer.error
    return f"[{answer.probe.category}] {request!r}\n    -> {answer.status}: {reply!r}"


# --- the run --------------------------------------------------------------------------------------


@dataclass
class HostileRun:
    """Everything one run observed; each test below checks one invariant against it."""

    content: Content
    probes: list[Probe]
    answers: list[Answer]
    elapsed: float
    planted: dict[Path, bytes]
    planted_after: dict[Path, bytes | None]
    """What each planted secret file held after the run (None: it was gone)."""
    passwd: list[bytes]
    opened: OpenRecorder
    cache_root: Path
    upstream: list[RecordedRequest]
    tree_before: dict[str, int]
    tree_after: dict[str, int]
    in_flight_after: int
    scan: ScanReport

    @property
    def summary(self) -> str:
        statuses = Counter(a.status for a in self.answers)
        by_status = dict(sorted(statuses.items(), key=str))
        return f"{len(self.answers)} requests in {self.elapsed:.1f} s; statuses {by_status}"


def proxy_settings(hub: FakeHub, cache_root: Path) -> Settings:
    """As tests/conftest.py's make_proxy sets it up, with tags trusted for the whole run."""
    return settings_with(
        url=hub.url,
        location=StorageLocation(path=cache_root),
        connect_timeout=2.0,
        read_timeout=5.0,
        tag_ttl=3600,
    )


async def hostile_run(work: Path) -> HostileRun:
    """Serve the proxy as ``registry-proxy serve`` does, send the probes, look at what happened."""
    cache_root = work / "run" / "cache"
    async with FakeHub() as hub:
        content = populate(hub)
        app = create_app(proxy_settings(hub, cache_root), retry_delays=(0.01, 0.01))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            services = app[SERVICES]
            # Some of the image cached, some not: Range requests meet both kinds.
            async with aiohttp.ClientSession() as session:
                for path in (
                    "/v2/library/golang/manifests/1.22",
                    f"/v2/golang/blobs/{content.warm_blob}",
                ):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == 200, path
                        await response.read()
            planted = plant_sentinels(cache_root, content)
            tree_before = tree(work, cache_root)

            probes = Generator(content).probes(PROBES)
            started = time.monotonic()
            with OpenRecorder() as opened:
                answers = await run_probes(port, probes)
            elapsed = time.monotonic() - started
            # Blobs of the images the probes were served start downloading in the background.
            await asyncio.wait_for(services.prefetch.wait_idle(), timeout=10)
            await services.blobs.drain(10)  # downloads the probes started
            in_flight_after = services.blobs.in_flight
        finally:
            await runner.cleanup()
        upstream = list(hub.requests)
    tree_after = tree(work, cache_root)
    planted_after = {place: place.read_bytes() if place.exists() else None for place in planted}
    for place in planted:
        place.unlink(missing_ok=True)
    scan = await asyncio.to_thread(scan_directory, cache_root)
    return HostileRun(
        content=content,
        probes=probes,
        answers=answers,
        elapsed=elapsed,
        planted=planted,
        planted_after=planted_after,
        passwd=passwd_lines(),
        opened=opened,
        cache_root=cache_root,
        upstream=upstream,
        tree_before=tree_before,
        tree_after=tree_after,
        in_flight_after=in_flight_after,
        scan=scan,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> HostileRun:
    """One run for the whole module, in an event loop of its own (in its own thread, so it
    cannot meet the loops pytest-asyncio manages); the proxy runs as ``registry-proxy serve``
    runs it (aiohttp's handler_cancellation off)."""
    work = tmp_path_factory.mktemp("hostile")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, hostile_run(work)).result()


# --- what must hold -------------------------------------------------------------------------------


def test_the_run_tried_every_kind_of_hostile_request(run: HostileRun) -> None:
    assert len(run.answers) == len(run.probes) == PROBES
    assert {p.category for p in run.probes} >= {
        "path",
        "range",
        "header",
        "request-line",
        "control",
    }
    # Most of it was refused as the client's error.
    client_errors = sum(1 for a in run.answers if a.status is not None and 400 <= a.status < 500)
    assert client_errors > PROBES // 2, run.summary


def test_every_request_is_answered(run: HostileRun) -> None:
    """An incomplete request may be closed without an answer, but never left hanging."""
    unanswered = [
        a for a in run.answers if a.status is None and not (a.probe.incomplete and a.closed)
    ]
    assert not unanswered, (
        run.summary + "\nunanswered:\n" + "\n".join(describe(a) for a in unanswered[:20])
    )


def test_no_answer_is_a_server_error(run: HostileRun) -> None:
    """Malformed input is the client's error (4xx); a valid request gets its 2xx/3xx."""
    server_errors = [a for a in run.answers if a.status is not None and a.status >= 500]
    assert not server_errors, (
        run.summary + "\n5xx answers:\n" + "\n".join(describe(a) for a in server_errors[:20])
    )


def test_well_formed_pulls_get_their_exact_bytes(run: HostileRun) -> None:
    """The noise does not disturb real clients."""
    controls = [a for a in run.answers if a.probe.expected is not None]
    assert controls
    wrong = [
        a
        for a in controls
        if a.probe.expected is not None
        and (
            a.status != a.probe.expected.status
            or (
                a.probe.expected.body_sha256 is not None
                and _sha(a.body) != a.probe.expected.body_sha256
            )
        )
    ]
    assert not wrong, "well-formed requests answered wrongly:\n" + "\n".join(
        describe(a) for a in wrong[:20]
    )


def test_no_planted_secret_is_served(run: HostileRun) -> None:
    leaks = [
        (a, place) for a in run.answers for place, secret in run.planted.items() if secret in a.raw
    ]
    assert not leaks, "planted secrets served:\n" + "\n".join(
        f"{place}: {describe(a)}" for a, place in leaks[:10]
    )


def test_etc_passwd_is_never_served(run: HostileRun) -> None:
    leaks = [a for a in run.answers if any(line in a.raw for line in run.passwd)]
    assert not leaks, "/etc/passwd served:\n" + "\n".join(describe(a) for a in leaks[:10])


def test_no_file_outside_the_cache_is_opened(run: HostileRun) -> None:
    """By any thread of the process, while the requests were answered."""
    assert run.opened.paths, "the audit hook saw no file opened at all"
    assert run.opened.outside(run.cache_root) == []
    assert run.opened.among(run.planted) == []


def test_the_upstream_sees_only_the_registry_grammar(run: HostileRun) -> None:
    outside = [
        r
        for r in run.upstream
        if not (
            UPSTREAM_CDN_PATH.fullmatch(r.path)
            if r.server == "cdn"
            else UPSTREAM_REGISTRY_PATH.fullmatch(r.path)
        )
        or not {k.partition("=")[0] for k in r.query.split("&") if k} <= UPSTREAM_QUERY_KEYS
    ]
    assert not outside, "upstream requests outside the grammar:\n" + "\n".join(
        f"{r.server} {r.method} {r.path}?{r.query}" for r in outside[:20]
    )
    assert {r.method for r in run.upstream} <= {"GET", "HEAD"}


def test_nothing_is_written_outside_the_cache(run: HostileRun) -> None:
    assert run.in_flight_after == 0, "downloads the probes started did not finish"
    assert run.tree_after == run.tree_before
    changed = [place for place, secret in run.planted.items() if run.planted_after[place] != secret]
    assert changed == [], "planted files changed or removed"


def test_the_cache_holds_only_verified_entries(run: HostileRun) -> None:
    assert run.scan.problems == [], run.scan.describe()
    assert run.scan.temp_files == [], run.scan.describe()
    assert run.content.uncached_blob in run.scan.digests  # the probes' pulls were cached


@pytest.mark.parametrize("n", ["1" * 5000, "%C2%B2", "1%C2%B2"])
async def test_tags_list_page_size_that_is_not_a_number_is_a_client_error(
    fakehub: FakeHub, make_proxy: ProxyFactory, n: str
) -> None:
    """``n`` made of characters that str.isdigit() accepts but int() refuses: 5000 digits (over
    Python's 4300-digit limit of int(str)), a superscript two. Today both are answered 500."""
    populate(fakehub)
    client = await make_proxy(fakehub)
    response = await client.get(f"/v2/library/golang/tags/list?n={n}")
    assert response.status == 400, (response.status, await response.text())
    body = await response.json()
    assert body["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
