"""A TLS front for the proxy, standing in for the Application Load Balancer.

It terminates TLS with a server certificate of the test's private CA and relays each connection
to the proxy over plain HTTP, adding ``X-Forwarded-For`` (the client's address appended, as an
ALB does) and ``X-Forwarded-Proto: https`` to every request. With a client CA it requires and
verifies a client certificate, as an ALB listener with mutual TLS in verify mode does; with a
revocation list (PEM), a revoked certificate is refused too.

Every handshake and request is written to stdout as one JSON line (``{"event": "handshake",
"peer", "ok", "error", "client_serial"}``, ``{"event": "request", "peer", "method", "target",
"client_serial"}``), so a test can tell which connections were refused and why.

Run as a program (``python -m support.tls_front --listen HOST:PORT --upstream HOST:PORT --cert
PEM --key PEM [--client-ca PEM [--crl PEM]]``); :class:`TlsFront` runs it as a managed
subprocess. Only
requests without a body or with ``Content-Length`` are relayed (a registry pull sends no
other); responses are relayed as they come.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from support.managed_process import ManagedProcess

MAX_HEADER_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT = 15.0


def _log(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def server_context(
    cert: Path, key: Path, client_ca: Path | None, crl: Path | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
        if crl is not None:
            context.load_verify_locations(cafile=str(crl))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def _serial(writer: asyncio.StreamWriter) -> str | None:
    ssl_object = writer.get_extra_info("ssl_object")
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    serial = certificate.get("serialNumber") if certificate else None
    return str(serial) if serial is not None else None


def _with_forwarding(head: bytes, peer: str) -> tuple[bytes, int, str, str]:
    """The request head with X-Forwarded-For/-Proto set; its body length, method and target."""
    lines = head.decode("latin-1").split("\r\n")
    method, target = [*lines[0].split(" "), "", ""][:2]
    forwarded_for = peer
    length = 0
    kept = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(":")
        lowered = name.strip().lower()
        if lowered == "x-forwarded-for":
            forwarded_for = f"{value.strip()}, {peer}"
            continue
        if lowered == "x-forwarded-proto":
            continue
        if lowered == "transfer-encoding":
            raise ValueError("chunked requests are not relayed")
        if lowered == "content-length":
            length = int(value.strip())
        kept.append(line)
    kept += [f"X-Forwarded-For: {forwarded_for}", "X-Forwarded-Proto: https"]
    return ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1"), length, method, target


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write_eof()


async def _requests(
    client: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    peer: str,
    serial: str | None,
) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
        while True:
            try:
                head = await client.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                return
            forwarded, length, method, target = _with_forwarding(head[:-4], peer)
            _log(event="request", peer=peer, method=method, target=target, client_serial=serial)
            upstream.write(forwarded)
            if length:
                upstream.write(await client.readexactly(length))
            await upstream.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        upstream.write_eof()


async def serve(
    listen: tuple[str, int], upstream: tuple[str, int], context: ssl.SSLContext
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername")[0])
        serial = _serial(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError as exc:
            _log(event="upstream_failed", peer=peer, error=repr(exc))
            writer.close()
            return
        try:
            await asyncio.gather(
                _requests(reader, up_writer, peer, serial), _pipe(up_reader, writer)
            )
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(ConnectionError, OSError):
                    w.close()

    async def accept(sock: socket.socket) -> None:
        """The TLS handshake, logged whether it passes or fails, then the relay."""
        peer = sock.getpeername()[0]
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            _log(event="handshake", peer=peer, ok=False, error=str(exc), client_serial=None)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        _log(event="handshake", peer=peer, ok=True, error=None, client_serial=_serial(writer))
        try:
            await handle(reader, writer)
        except Exception as exc:  # a test front must say what went wrong, never hang
            _log(event="relay_error", peer=peer, error=repr(exc))
            writer.close()

    listener = socket.create_server(listen, reuse_port=False)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    _log(event="listening", address=f"{listen[0]}:{listen[1]}")
    while True:
        sock, _ = await loop.sock_accept(listener)
        task = asyncio.create_task(accept(sock))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--upstream", type=_address, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--client-ca", type=Path)
    parser.add_argument("--crl", type=Path)
    args = parser.parse_args(argv)
    context = server_context(args.cert, args.key, args.client_ca, args.crl)
    asyncio.run(serve(args.listen, args.upstream, context))


class TlsFront(ManagedProcess):
    """The front as a subprocess, listening on ``listen`` (HOST:PORT), relaying to the proxy at
    ``upstream``; :meth:`events` reads what it logged."""

    name = "tls-front"

    def __init__(
        self,
        workdir: Path,
        listen: str,
        upstream: str,
        cert: Path,
        key: Path,
        *,
        client_ca: Path | None = None,
        crl: Path | None = None,
    ) -> None:
        super().__init__(workdir, workdir / "front.log", workdir / "front.err")
        self.listen = listen
        self.upstream = upstream
        self.options = ["--cert", str(cert), "--key", str(key)]
        if client_ca is not None:
            self.options += ["--client-ca", str(client_ca)]
        if crl is not None:
            self.options += ["--crl", str(crl)]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "support.tls_front",
            "--listen",
            self.listen,
            "--upstream",
            self.upstream,
            *self.options,
        ]

    def environment(self) -> Mapping[str, str]:
        return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def readiness(self) -> str | None:
        return None if any(e["event"] == "listening" for e in self.events()) else "not listening"

    def events(self, event: str | None = None) -> list[dict[str, object]]:
        """What the front logged, optionally only one kind of event."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and (event is None or record.get("event") == event):
                    records.append(record)
        return records


if __name__ == "__main__":
    main()
