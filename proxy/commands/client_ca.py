"""The client CA behind ``registry-proxy certs`` (proxy.commands.certs): its files, client
certificates, and the revocation list, with the ``cryptography`` package.

See proxy.commands.certs for what each file is for and where the CA key lives.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A revocation list names when the next one is due; a verifier may refuse every certificate
# once that time has passed. A year, renewed by every revoke (or renew-crl).
CRL_DAYS = 365
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertsError(Exception):
    """A problem the operator can fix; the message says what."""


@dataclass(frozen=True)
class CaFiles:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def issued(self) -> Path:
        return self.directory / "issued.tsv"

    @property
    def config(self) -> Path:
        return self.directory / "config.json"


# ---------------------------------------------------------------------- the CA


def init_ca(files: CaFiles, name: str, days: int, publish: Path) -> None:

    if files.key.exists():
        raise CertsError(f"{files.key} exists: this directory already holds a CA")
    files.directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    now = _now()
    subject = _name(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(files.key, _key_pem(key))
    files.cert.write_bytes(_cert_pem(cert))
    files.issued.write_text("")
    files.config.write_text(json.dumps({"publish": str(publish.resolve())}, indent=2) + "\n")
    write_crl(files, [])


def publish_dir(files: CaFiles) -> Path:
    try:
        return Path(json.loads(files.config.read_text())["publish"])
    except (OSError, ValueError, KeyError) as exc:
        raise CertsError(f"{files.config} is missing or broken ({exc}): is --dir a CA?") from exc


def _load_ca(files: CaFiles) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:

    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertsError(f"cannot read the CA in {files.directory}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertsError(f"{files.key} is not an RSA key")
    return cert, key


# ---------------------------------------------------------------------- client certificates


def issue(files: CaFiles, name: str, days: int) -> dict[str, str]:

    if not NAME.match(name):
        raise CertsError(
            f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (a project or team)"
        )
    ca_cert, ca_key = _load_ca(files)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    serial = f"{cert.serial_number:x}"
    with files.issued.open("a") as index:
        index.write(f"{serial}\t{name}\t{not_after.isoformat()}\n")
    return {
        "certificate": _cert_pem(cert).decode(),
        "private_key": _key_pem(key).decode(),
        "serial": serial,
        "name": name,
        "not_after": not_after.isoformat(),
    }


def issued(files: CaFiles) -> list[tuple[str, str]]:
    """(serial, name) of every certificate issued."""
    try:
        lines = files.issued.read_text().splitlines()
    except OSError as exc:
        raise CertsError(f"cannot read {files.issued}: {exc}") from exc
    return [(fields[0], fields[1]) for fields in (line.split("\t") for line in lines) if fields[0]]


def revoke(files: CaFiles, which: list[str]) -> list[str]:
    """Revoke each SERIAL (hex) or NAME (all its certificates); returns the serials added."""
    known = issued(files)
    serials: list[str] = []
    for item in which:
        matches = [s for s, n in known if n == item or s == item.lower().removeprefix("0x")]
        if not matches:
            raise CertsError(
                f"{item!r} is neither the serial nor the name of an issued certificate"
            )
        serials += [s for s in matches if s not in serials]
    revoked = revoked_serials(files)
    added = [s for s in serials if s not in revoked]
    write_crl(files, revoked + added)
    return added


# ---------------------------------------------------------------------- the revocation list


def revoked_serials(files: CaFiles) -> list[str]:

    try:
        crl = x509.load_pem_x509_crl(files.crl.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertsError(f"cannot read {files.crl}: {exc}") from exc
    return [f"{entry.serial_number:x}" for entry in crl]


def write_crl(files: CaFiles, serials: list[str]) -> None:
    """Sign the list of ``serials`` and write it to the CA directory and the published one."""

    ca_cert, ca_key = _load_ca(files)
    now = _now()
    previous = 0
    if files.crl.exists():
        number = x509.load_pem_x509_crl(files.crl.read_bytes()).extensions.get_extension_for_class(
            x509.CRLNumber
        )
        previous = number.value.crl_number
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(min(now + datetime.timedelta(days=CRL_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.CRLNumber(previous + 1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(now - datetime.timedelta(minutes=1))
            .build()
        )
    pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    files.crl.write_bytes(pem)
    target = publish_dir(files)
    target.mkdir(parents=True, exist_ok=True)
    (target / "ca.pem").write_bytes(files.cert.read_bytes())
    (target / "crl.pem").write_bytes(pem)


# ---------------------------------------------------------------------- helpers


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:

    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _cert_pem(cert: x509.Certificate) -> bytes:

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)
