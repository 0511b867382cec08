"""``registry-proxy certs``: the CA, client certificates, revocation, and a real TLS front that
verifies them as the load balancer does (support.tls_front: OpenSSL through Python's ssl, in
verify mode, the revocation list loaded) with curl as the client."""

from __future__ import annotations

import http.server
import json
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from support.binaries import free_port, require_binaries
from support.server_tls import ServerTls, make_server_tls
from support.tls_front import TlsFront

from proxy.commands.cli import main

HOST = "registry.build.example.com"


def certs(*args: str | Path) -> int:
    return main(["certs", *map(str, args)])


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    directory = tmp_path / "private-ca"
    assert certs("init-ca", "--dir", directory, "--publish", tmp_path / "infra" / "client-ca") == 0
    return directory


def issue(ca: Path, name: str, out: Path) -> dict[str, str]:
    assert certs("issue", "--dir", ca, name, "--out", out) == 0
    document: dict[str, str] = json.loads(out.read_text())
    return document


def test_init_ca_keeps_the_key_private_and_publishes_only_public_files(
    ca: Path, tmp_path: Path
) -> None:
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    published = tmp_path / "infra" / "client-ca"
    assert sorted(p.name for p in published.iterdir()) == ["ca.pem", "crl.pem"]
    cert = x509.load_pem_x509_certificate((published / "ca.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    crl = x509.load_pem_x509_crl((published / "crl.pem").read_bytes())
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    # a second init would replace the key every issued certificate hangs on
    assert certs("init-ca", "--dir", ca, "--publish", published) == 1


def test_issued_certificate_is_a_client_certificate_of_the_ca(ca: Path, tmp_path: Path) -> None:
    document = issue(ca, "team-payments", tmp_path / "team-payments.json")
    assert stat.S_IMODE((tmp_path / "team-payments.json").stat().st_mode) == 0o600
    assert set(document) == {"certificate", "private_key", "serial", "name", "not_after"}
    cert = x509.load_pem_x509_certificate(document["certificate"].encode())
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert f"{cert.serial_number:x}" == document["serial"]
    assert document["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert (ca / "issued.tsv").read_text().split("\t")[:2] == [document["serial"], "team-payments"]


def test_bad_names_and_unknown_certificates_are_refused(
    ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert certs("issue", "--dir", ca, "team payments") == 1
    assert "use 1-64 letters" in capsys.readouterr().err
    assert certs("revoke", "--dir", ca, "nobody") == 1
    assert "neither the serial nor the name" in capsys.readouterr().err


# ---------------------------------------------------------------------- through a TLS front


class _Echo(http.server.BaseHTTPRequestHandler):
    """The proxy's stand-in: answers with the X-Forwarded-For it got."""

    def do_GET(self) -> None:
        body = (self.headers.get("X-Forwarded-For") or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server_tls(tmp_path: Path) -> ServerTls:
    return make_server_tls(tmp_path / "server", [HOST])


def curl(
    front: TlsFront, server: ServerTls, client: Path | None
) -> subprocess.CompletedProcess[str]:
    """GET / from the front as HOST, with the client certificate in ``client`` (its JSON)."""
    program = require_binaries("curl")["curl"]
    args = [program, "--silent", "--show-error", "--max-time", "10", "--noproxy", "*"]
    args += ["--cacert", str(server.ca_file), "--resolve", f"{HOST}:{front.port}:127.0.0.1"]
    if client is not None:
        document = json.loads(client.read_text())
        cert, key = client.with_suffix(".cert"), client.with_suffix(".key")
        cert.write_text(document["certificate"])
        key.write_text(document["private_key"])
        args += ["--cert", str(cert), "--key", str(key)]
    args.append(f"https://{HOST}:{front.port}/")
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def start_front(tmp_path: Path, echo: str, server: ServerTls, ca: Path) -> TlsFront:
    published = tmp_path / "infra" / "client-ca"
    front = TlsFront(
        tmp_path / f"front-{free_port()}",
        f"127.0.0.1:{free_port()}",
        echo,
        server.cert_file,
        server.key_file,
        client_ca=published / "ca.pem",
        crl=published / "crl.pem",
    )
    front.start()
    return front


def test_front_admits_issued_certificates_and_refuses_others_and_revoked_ones(
    ca: Path, tmp_path: Path, echo: str, server_tls: ServerTls
) -> None:
    kept = issue(ca, "team-a", tmp_path / "team-a.json")
    doomed = issue(ca, "team-b", tmp_path / "team-b.json")
    front = start_front(tmp_path, echo, server_tls, ca)
    try:
        admitted = curl(front, server_tls, tmp_path / "team-a.json")
        assert admitted.returncode == 0, admitted.stderr
        assert admitted.stdout == "127.0.0.1"  # X-Forwarded-For: the client, as an ALB adds it
        assert curl(front, server_tls, tmp_path / "team-b.json").returncode == 0
        refused = curl(front, server_tls, None)
        assert refused.returncode != 0, refused.stdout
        failures = [e for e in front.events("handshake") if not e["ok"]]
        assert len(failures) == 1, front.events()
        admitted_serials = {e["client_serial"] for e in front.events("handshake") if e["ok"]}
        assert {s.lower().lstrip("0") for s in admitted_serials if isinstance(s, str)} == {
            kept["serial"].lstrip("0"),
            doomed["serial"].lstrip("0"),
        }
    finally:
        front.stop()

    assert certs("revoke", "--dir", ca, "team-b") == 0
    crl = x509.load_pem_x509_crl((tmp_path / "infra" / "client-ca" / "crl.pem").read_bytes())
    assert [f"{entry.serial_number:x}" for entry in crl] == [doomed["serial"]]
    front = start_front(tmp_path, echo, server_tls, ca)  # the trust store with the new list
    try:
        assert curl(front, server_tls, tmp_path / "team-a.json").returncode == 0
        revoked = curl(front, server_tls, tmp_path / "team-b.json")
        assert revoked.returncode != 0, revoked.stdout
        errors = [e["error"] for e in front.events("handshake") if not e["ok"]]
        assert any("revoked" in str(error) for error in errors), errors
    finally:
        front.stop()


def test_revoking_again_and_renewing_keep_the_list(ca: Path, tmp_path: Path) -> None:
    document = issue(ca, "team-c", tmp_path / "team-c.json")
    assert certs("revoke", "--dir", ca, document["serial"]) == 0
    assert certs("revoke", "--dir", ca, "team-c") == 0  # already revoked: nothing added
    assert certs("renew-crl", "--dir", ca) == 0
    crl = x509.load_pem_x509_crl((ca / "crl.pem").read_bytes())
    assert [f"{entry.serial_number:x}" for entry in crl] == [document["serial"]]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 4  # init, revoke, revoke, renew: each list is a new one
