"""``registry-proxy certs``: the client certificates builds outside a VPC present to the proxy.

An internet-facing load balancer in front of the proxy requires a client certificate (mutual
TLS, verify mode) issued by a CA in its trust store. These commands keep that CA:

* ``init-ca --dir DIR --publish PUBLIC``: a new CA. ``DIR`` (on the operator's machine, outside
  any repository) gets ``ca.key``, its private key (mode 0600), ``ca.pem``, ``crl.pem``,
  ``issued.tsv`` (serial, name, expiry of every certificate issued) and ``config.json``.
  ``PUBLIC`` (``infra/client-ca``) gets only what the stack needs and may be committed:
  ``ca.pem`` (the trust store's CA bundle) and ``crl.pem`` (its revocation list).
* ``issue --dir DIR NAME``: a client certificate for one project or team, printed (or written
  with ``--out``, mode 0600) as the JSON the builds' Secrets Manager secret holds:
  ``{"certificate": PEM, "private_key": PEM, "serial": HEX, "name": NAME, "not_after": ISO}``.
* ``revoke --dir DIR SERIAL|NAME``: adds the certificate(s) to the revocation list, signs it
  again and publishes it; the stack's next deploy loads it into the trust store.
* ``renew-crl --dir DIR``: signs the list again with a fresh validity (see ``CRL_DAYS``).

The CA key never leaves the machine the commands run on: the AWS account holds only client
certificates (each revocable), so a leaked build role or secret can never mint new ones.
Keys: RSA 3072 for the CA, RSA 2048 for clients (what every TLS stack and the ALB accept).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CA_DAYS = 3650
CLIENT_DAYS = 825
INSTALL_HINT = "pip install 'registry-proxy[certs]' (the cryptography package)"


def add_parser(commands: Any) -> None:
    """The ``certs`` command and its subcommands, on the CLI's subparsers."""
    certs = commands.add_parser(
        "certs",
        help="client certificates for builds that reach the proxy over mutual TLS",
        description="Keep the CA whose client certificates the internet-facing load balancer "
        "accepts: create it, issue a certificate per project or team, revoke one.",
    )
    tools = certs.add_subparsers(dest="certs_command", required=True)
    init = tools.add_parser("init-ca", help="create the CA (ca.key stays in --dir)")
    init.add_argument("--name", default="registry-proxy client CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    init.add_argument(
        "--publish",
        type=Path,
        required=True,
        help="directory for ca.pem and crl.pem, the files the stack reads (e.g. infra/client-ca)",
    )
    issue = tools.add_parser("issue", help="a client certificate, as Secrets Manager JSON")
    issue.add_argument("name", help="the project or team it is for (its common name)")
    issue.add_argument(
        "--days", type=int, default=CLIENT_DAYS, help=f"validity (default {CLIENT_DAYS})"
    )
    issue.add_argument("--out", type=Path, help="write the JSON here (mode 0600), not stdout")
    revoke = tools.add_parser("revoke", help="revoke certificates by serial or by name")
    revoke.add_argument("which", nargs="+", metavar="SERIAL|NAME")
    tools.add_parser("renew-crl", help="sign the revocation list again, valid for another year")
    for tool in (init, issue, revoke, tools.choices["renew-crl"]):
        tool.add_argument(
            "--dir", type=Path, required=True, help="the CA's private directory (holds ca.key)"
        )


def run(args: argparse.Namespace) -> int:
    try:
        from proxy.commands import client_ca
    except ImportError as exc:
        print(f"registry-proxy: certs needs {exc.name}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    files = client_ca.CaFiles(args.dir)
    try:
        match args.certs_command:
            case "init-ca":
                client_ca.init_ca(files, args.name, args.days, args.publish)
                print(f"CA created in {files.directory}; the stack's files are in {args.publish}")
            case "issue":
                document = client_ca.issue(files, args.name, args.days)
                text = json.dumps(document, indent=2) + "\n"
                if args.out is None:
                    sys.stdout.write(text)
                else:
                    client_ca.write_private(args.out, text.encode())
                    print(f"certificate {document['serial']} for {args.name} in {args.out}")
            case "revoke":
                for serial in client_ca.revoke(files, args.which):
                    print(f"revoked {serial}")
                print(
                    f"revocation list published to {client_ca.publish_dir(files)}: deploy the stack"
                )
            case "renew-crl":
                client_ca.write_crl(files, client_ca.revoked_serials(files))
                print(f"revocation list renewed and published to {client_ca.publish_dir(files)}")
    except client_ca.CertsError as exc:
        print(f"registry-proxy certs: {exc}", file=sys.stderr)
        return 1
    return 0
