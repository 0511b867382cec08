"""The proxy in process, as the ``make_proxy`` fixture (tests/conftest.py) builds it.

The type of that fixture and of its clients, what most requests send, where a client's cache
directory is, and the ``cache`` commands run as ``registry-proxy cache`` runs them.
"""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.commands.cache import Output, run
from proxy.commands.cli import build_parser
from proxy.config import Settings
from proxy.http.routes import SERVICES
from proxy.registry.manifest import MANIFEST_TYPES
from proxy.storage.filesystem import FilesystemStorage

Client = TestClient[web.Request, web.Application]
"""A client of the app on a loopback port (what ``make_proxy`` returns)."""

ProxyFactory = Callable[..., Awaitable[Client]]
"""``make_proxy(hub, **settings)``."""

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_TYPES)}
"""An Accept header naming every manifest type the proxy serves."""


def blob_path(digest: str, repository: str = "library/golang") -> str:
    return f"/v2/{repository}/blobs/{digest}"


def cache_root(client: Client) -> Path:
    """The cache directory of a proxy whose storage is a directory."""
    storage = client.app[SERVICES].storage.inner
    assert isinstance(storage, FilesystemStorage)
    return storage.root


async def downloads_settled(client: Client, within: float = 30.0) -> None:
    """Wait until no download of the proxy is running: each blob it fetched is stored, or has
    failed. A client gets its last bytes once the blob verified, before it is stored."""
    blobs = client.app[SERVICES].blobs
    await blobs.drain(within)
    assert blobs.in_flight == 0, f"downloads still running after {within} s"


def cached_blobs(client: Client) -> list[Path]:
    """The blob files in that directory."""
    return [p for p in (cache_root(client) / "data" / "blobs").rglob("*") if p.is_file()]


async def cache_command(
    settings: Settings, *argv: str, clock: float | None = None
) -> tuple[int, str]:
    """``registry-proxy cache ARGV...`` on ``settings``: its exit status and output."""
    args = build_parser().parse_args(["cache", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = await run(
        settings, args, output=Output(out, err), clock=(lambda: clock) if clock else time.time
    )
    return status, out.getvalue() + err.getvalue()
