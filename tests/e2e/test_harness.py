"""Self-tests of the end-to-end harness (tests/support), without the proxy.

The pure-Python parts (token server, image layout, access-log parsing, require_binaries,
ProxyProcess with a stand-in server) run everywhere; the parts that run docker-registry and
skopeo are marked e2e.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from support.binaries import free_port, require_binaries
from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution, parse_access_line
from support.managed_process import ManagedProcess
from support.oci_image import (
    OCI_LAYER_GZIP,
    PushedImage,
    Skopeo,
    build_oci_layout,
    verify_dir_copy,
)
from support.proxy_process import ProxyProcess
from support.token_server import TokenServer

e2e = pytest.mark.e2e


# ---------------------------------------------------------------------- binaries


def test_require_binaries_skips_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PROXY_TEST_REQUIRE_BINARIES", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"'skopeo' \(Debian package: skopeo\)"):
        require_binaries("skopeo")


def test_require_binaries_fails_when_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PROXY_TEST_REQUIRE_BINARIES", "1")
    with pytest.raises(pytest.fail.Exception, match="docker-registry"):
        require_binaries("docker-registry")


def test_require_binaries_returns_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tool = tmp_path / "some-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert require_binaries("some-tool") == {"some-tool": str(tool)}


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


# ---------------------------------------------------------------------- access log


def test_parse_access_line() -> None:
    line = (
        '127.0.0.1 - - [22/Nov/2026:15:57:46 +0000] "GET /v2/library/x/blobs/'
        'sha256:abc?x=1 HTTP/1.1" 400 110 "" "skopeo/1.9.3"'
    )
    entry = parse_access_line(line)
    assert entry is not None
    assert (entry.method, entry.path, entry.query) == (
        "GET",
        "/v2/library/x/blobs/sha256:abc",
        "x=1",
    )
    assert (entry.status, entry.size, entry.agent) == (400, 110, "skopeo/1.9.3")
    assert parse_access_line('time="2026-11-22T15:57:45Z" level=info msg="x"') is None


# ---------------------------------------------------------------------- image layout


def test_layout_is_deterministic_and_shares_the_base_layer(tmp_path: Path) -> None:
    first = build_oci_layout(tmp_path / "a", tags=("t1", "t2"), seed=7)
    second = build_oci_layout(tmp_path / "b", tags=("t1", "t2"), seed=7)
    other = build_oci_layout(tmp_path / "c", seed=8)
    assert first.index.digest == second.index.digest
    assert first.index.digest != other.index.digest
    assert [str(i.platform) for i in first.images] == ["linux/amd64", "linux/arm64/v8"]
    amd64, arm64 = first.images
    assert amd64.layers[0] == arm64.layers[0]  # shared base
    assert len(amd64.layers) == 3
    assert {d.media_type for d in amd64.layers} == {OCI_LAYER_GZIP}
    assert set(amd64.layers[1:]).isdisjoint(arm64.layers[1:])
    assert 1_000_000 < first.total_size < 3_000_000
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert refs == ["t1", "t2"]
    for digest in first.blob_digests:
        assert (tmp_path / "a" / "blobs" / "sha256" / digest.removeprefix("sha256:")).exists()


def test_layout_layer_sizes_are_configurable(tmp_path: Path) -> None:
    layout = build_oci_layout(
        tmp_path, base_layer_size=10_000, platform_layer_sizes=(50_000, 20_000, 5_000)
    )
    sizes = [d.size for d in layout.images[0].layers]
    assert len(sizes) == 4
    assert 50_000 < sizes[1] < 60_000


# ---------------------------------------------------------------------- token server


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path, {"alice": "secret"})
    server.start()
    yield server
    server.stop()


def _get_token(
    server: TokenServer, scope: str | None, creds: tuple[str, str] | None
) -> tuple[int, dict[str, Any]]:
    query = {"service": server.service} | ({"scope": scope} if scope else {})
    req = urllib.request.Request(f"{server.realm}?{urllib.parse.urlencode(query)}")
    if creds:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(creds).encode()).decode()
        )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_token_server_denies_anonymous_and_wrong_password(tokens: TokenServer) -> None:
    assert _get_token(tokens, "repository:library/x:pull", None)[0] == 401
    assert _get_token(tokens, "repository:library/x:pull", ("alice", "wrong"))[0] == 401
    assert _get_token(tokens, "repository:library/x:pull", ("bob", "secret"))[0] == 401
    assert tokens.count() == 3
    assert tokens.count(granted_only=True) == 0


def test_token_server_issues_signed_jwt(tokens: TokenServer) -> None:
    status, body = _get_token(tokens, "repository:library/golang:pull,push", ("alice", "secret"))
    assert status == 200
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    header_b64, claims_b64, signature_b64 = body["token"].split(".")
    header = json.loads(_b64decode(header_b64))
    claims = json.loads(_b64decode(claims_b64))
    assert header["alg"] == "RS256"
    cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    assert cert == x509.load_pem_x509_certificate(tokens.cert_path.read_bytes())
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(  # raises InvalidSignature when wrong
        _b64decode(signature_b64),
        f"{header_b64}.{claims_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    assert claims["iss"] == tokens.issuer
    assert claims["sub"] == "alice"
    assert claims["aud"] == "registry.docker.io"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] <= claims["iat"]
    assert claims["jti"]
    assert claims["access"] == [
        {"type": "repository", "name": "library/golang", "actions": ["pull", "push"]}
    ]
    (request,) = tokens.requests()
    assert (request.account, request.status) == ("alice", 200)


def test_token_server_anonymous_pull_when_allowed(tmp_path: Path) -> None:
    with TokenServer(tmp_path, {}, allow_anonymous_pull=True) as server:
        status, body = _get_token(server, "repository:library/golang:pull,push", None)
        assert status == 200
        claims = json.loads(_b64decode(body["token"].split(".")[1]))
        assert claims["access"] == [
            {"type": "repository", "name": "library/golang", "actions": ["pull"]}
        ]


def test_token_server_oauth_post_and_injected_failure(tokens: TokenServer) -> None:
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": "alice",
            "password": "secret",
            "service": tokens.service,
            "scope": "repository:library/a:pull",
            "client_id": "test",
        }
    ).encode()
    with urllib.request.urlopen(urllib.request.Request(tokens.realm, data=form), timeout=10) as r:
        body = json.loads(r.read())
    assert body["access_token"]
    assert body["scope"] == "repository:library/a:pull"
    tokens.fail_with(503)
    assert _get_token(tokens, "repository:library/a:pull", ("alice", "secret"))[0] == 503
    tokens.fail_with(None)
    assert _get_token(tokens, "repository:library/a:pull", ("alice", "secret"))[0] == 200
    assert tokens.count() == 3


def test_token_server_restarts_on_the_same_port(tokens: TokenServer) -> None:
    realm = tokens.realm
    tokens.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(realm, timeout=5)
    tokens.start()
    assert tokens.realm == realm
    assert _get_token(tokens, None, ("alice", "secret"))[0] == 200


# ---------------------------------------------------------------------- ProxyProcess


FAKE_PROXY = """\
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    if os.environ.get("FAKE_FAIL"):
        print("fake proxy refusing to start", flush=True)
        sys.exit(3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok"
            if self.path == "/env":
                env = {k: v for k, v in os.environ.items() if k.startswith(("PROXY_", "FAKE_"))}
                body = json.dumps(env).encode()
            self.send_response(200 if self.path in ("/healthz", "/env") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    host, port = os.environ["PROXY_LISTEN"].rsplit(":", 1)
    print(json.dumps({"event": "listening", "port": int(port)}), flush=True)
    HTTPServer((host, int(port)), Handler).serve_forever()
"""


@pytest.fixture
def fake_proxy_executable(tmp_path: Path) -> Path:
    script = tmp_path / "fake-registry-proxy"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_PROXY))
    script.chmod(0o755)
    return script


def test_proxy_process_lifecycle(
    fake_proxy_executable: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXY_SOMETHING_INHERITED", "must not leak")
    proxy = ProxyProcess(
        tmp_path / "p",
        "http://127.0.0.1:1",
        username="u",
        password="p",
        extra_env={"FAKE_EXTRA": "yes"},
        executable=fake_proxy_executable,
    )
    with proxy:
        assert proxy.healthz() == 200
        with urllib.request.urlopen(proxy.url + "/env", timeout=5) as resp:
            env = json.loads(resp.read())
        assert env == {
            "PROXY_LISTEN": proxy.host,
            "PROXY_UPSTREAM_URL": "http://127.0.0.1:1",
            "PROXY_UPSTREAM_USERNAME": "u",
            "PROXY_UPSTREAM_PASSWORD": "p",
            "PROXY_STORAGE": str(tmp_path / "p" / "cache"),
            "PROXY_LOG_FORMAT": "json",
            "FAKE_EXTRA": "yes",
        }
        assert proxy.json_logs() == [{"event": "listening", "port": proxy.port}]
    assert proxy.returncode == -15  # SIGTERM, no handler in the stand-in
    assert proxy.healthz(timeout=2) is None
    proxy.start()
    assert proxy.kill() == -9


def test_proxy_process_start_failure_shows_the_log(
    fake_proxy_executable: Path, tmp_path: Path
) -> None:
    proxy = ProxyProcess(
        tmp_path,
        "http://127.0.0.1:1",
        extra_env={"FAKE_FAIL": "1"},
        executable=fake_proxy_executable,
    )
    with pytest.raises(RuntimeError, match=r"(?s)exited with 3.*refusing to start"):
        proxy.start()
    assert not proxy.running


# ---------------------------------------------------------------------- ManagedProcess


class Sleeper(ManagedProcess):
    """Prints a line, then sleeps; ready once it printed and ``ready_file`` exists."""

    name = "sleeper"
    start_timeout = 1.0

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, workdir / "sleeper.log")
        self.ready_file = workdir / "ready"
        self.starts = 0
        self.cleanups = 0

    def command(self) -> list[str]:
        script = "import time; print('sleeper here', flush=True); time.sleep(120)"
        return [sys.executable, "-c", script]

    def prepare(self) -> None:
        self.starts += 1

    def readiness(self) -> str | None:
        if not self.ready_file.exists():
            return "no ready file"
        printed = self.log_text().count("sleeper here") >= self.starts
        return None if printed else "not printed yet"

    def cleanup(self) -> None:
        self.cleanups += 1


def test_managed_process_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    sleeper = Sleeper(tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)not ready within 1.0 s \(no ready file\)"):
        sleeper.start()
    assert not sleeper.running and sleeper.process is None
    assert sleeper.returncode is not None  # stopped by its pid, and waited for
    assert sleeper.cleanups == 1


def test_managed_process_lifecycle(tmp_path: Path) -> None:
    sleeper = Sleeper(tmp_path)
    sleeper.ready_file.touch()
    with sleeper:
        assert sleeper.running and sleeper.pid is not None
        first = sleeper.pid
        sleeper.restart()
        assert sleeper.running and sleeper.pid != first
    assert sleeper.returncode == -15  # SIGTERM
    assert sleeper.cleanups == 2  # after the restart's stop and the final one
    sleeper.start()
    assert sleeper.kill() == -9
    assert sleeper.log_text().count("sleeper here") == 3  # appended across starts
    assert "sleeper here" in sleeper.log_tail()


# ---------------------------------------------------------------------- real programs


@e2e
def test_upstream_challenges_for_a_bearer_token(
    upstream: Distribution, token_server: TokenServer
) -> None:
    status, headers, _ = upstream.request("GET", "/v2/")
    assert status == 401
    challenge = headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{token_server.realm}"' in challenge
    assert 'service="registry.docker.io"' in challenge


@e2e
@pytest.mark.parametrize("tag", ["oci", "v2s2"])
def test_direct_pull_and_access_log_counting(
    upstream: Distribution,
    token_server: TokenServer,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
    tag: str,
) -> None:
    image = golang_images[tag]
    assert upstream.head_manifest("library/golang", tag) == image.index_digest
    digest, media_type, raw = upstream.manifest("library/golang", tag)
    assert (digest, media_type, raw) == (
        image.index_digest,
        image.index_media_type,
        image.index_bytes,
    )

    mark = upstream.mark()
    tokens_before = token_server.count(granted_only=True)
    skopeo.pull_to_dir(image.reference, tmp_path / "out", creds="hubuser:hubtoken")
    verify_dir_copy(tmp_path / "out", image)
    upstream.sync()

    assert upstream.blob_gets(since=mark) == dict.fromkeys(image.blob_digests, 1)
    assert upstream.count("GET", MANIFEST_PATH, since=mark) == 1 + len(image.manifests)
    assert upstream.count("GET", BLOB_PATH, since=mark, status=200) == len(image.blob_digests)
    assert ("GET", f"/v2/library/golang/manifests/{tag}") in upstream.requests()[mark:]
    assert token_server.count(granted_only=True) > tokens_before


@e2e
def test_anonymous_pull_is_refused_upstream(
    upstream: Distribution, skopeo: Skopeo, golang_images: dict[str, PushedImage], tmp_path: Path
) -> None:
    proc = skopeo.run(
        *skopeo.copy_args_to_dir(golang_images["oci"].reference, tmp_path / "out"), check=False
    )
    assert proc.returncode != 0


@e2e
def test_upstream_stop_and_restart(
    upstream: Distribution, golang_images: dict[str, PushedImage]
) -> None:
    image = golang_images["oci"]
    before = len(upstream.access_log())
    upstream.stop()
    assert not upstream.running
    with pytest.raises(OSError):
        upstream.request("GET", "/v2/", timeout=2)
    upstream.start()
    assert upstream.head_manifest("library/golang", "oci") == image.index_digest
    upstream.sync()
    assert len(upstream.access_log()) > before  # the log is appended to across restarts
