"""The access log and request metrics: what a line says about a request that went wrong.

- A client that disconnects in the middle of a blob is logged and counted as 499 ("client closed
  request"), never as a 5xx: a 5xx alert must mean a server fault.
- Control characters that reach a log line from a request (the path decodes ``%1b`` to ESC) are
  written as escapes, in the console and the JSON format alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from support.fakehub import FakeHub
from support.logwatch import watch_logs
from support.proxy_app import ProxyFactory
from support.settings import settings_with

from proxy.config import Settings, StorageLocation
from proxy.http.app import create_app
from proxy.http.routes import SERVICES
from proxy.ops.logs import log_processors

LAYER = bytes(range(256)) * 4096 * 3  # 3 MiB: the client leaves long before the end
CONTROL_PATH = "/v2/%1b[2J%1b]0;owned%07/x%0d%0aforged/manifests/latest"


@contextlib.asynccontextmanager
async def serve(app: web.Application, *, handler_cancellation: bool) -> AsyncIterator[str]:
    """The app on a loopback port; ``handler_cancellation`` as the server is configured.

    ``registry-proxy serve`` (web.run_app) leaves it off: a client that leaves is noticed at the
    next write. aiohttp's test server turns it on: the handler is cancelled at once.
    """
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def settings_for(hub: FakeHub, cache: Path) -> Settings:
    return settings_with(
        url=hub.url,
        location=StorageLocation(path=cache),
        connect_timeout=2.0,
        read_timeout=5.0,
    )


def request_line(path: str) -> Callable[[MutableMapping[str, Any]], bool]:
    """Matches the access log line of the request for ``path``."""
    return lambda event: event.get("event") == "request" and event.get("path") == path


def requests_counted(app: web.Application, status: str) -> float:
    value = app[SERVICES].metrics.registry.get_sample_value(
        "registry_proxy_requests_total", {"route": "blob", "method": "GET", "status": status}
    )
    return value or 0.0


@pytest.mark.parametrize("handler_cancellation", [False, True], ids=["serve", "cancelling"])
async def test_a_client_that_leaves_mid_blob_is_499_not_a_server_error(
    fakehub: FakeHub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    handler_cancellation: bool,
) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    # The upstream sends 1 MiB, then waits: the client is gone before the proxy writes again.
    paused = fakehub.inject(
        "pause_mid_blob", path_contains=digest, after_bytes=1024 * 1024, server="cdn"
    )
    path = f"/v2/library/golang/blobs/{digest}"
    app = create_app(settings_for(fakehub, tmp_path / "cache"), retry_delays=(0.01, 0.01))
    with watch_logs() as logs:
        async with serve(app, handler_cancellation=handler_cancellation) as url:
            async with aiohttp.ClientSession() as session:
                response = await session.get(url + path)
                assert response.status == 200
                await response.content.readexactly(64 * 1024)
                response.close()  # the client hangs up mid-blob
            await paused.wait_hit()
            paused.release()
            line = await logs.wait_for(request_line(path))
            assert line["status"] == 499
            assert requests_counted(app, "499") == 1
            assert requests_counted(app, "500") == 0
            # Nor does aiohttp log it as an error (with a traceback) on the proxy's behalf.
            assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
            # The shared download carries on for the cache: let it finish before the teardown.
            await app[SERVICES].blobs.drain(10)
            assert app[SERVICES].blobs.in_flight == 0


async def test_a_complete_blob_is_logged_200(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    digest = fakehub.add_blob(LAYER, repo="library/golang")
    client = await make_proxy(fakehub)
    path = f"/v2/library/golang/blobs/{digest}"
    with watch_logs() as logs:
        response = await client.get(path)
        assert await response.read() == LAYER
        line = await logs.wait_for(request_line(path))
    assert line["status"] == 200
    assert requests_counted(client.app, "200") == 1


# --- control characters ------------------------------------------------------------------------


@pytest.fixture(params=["console", "json"])
def rendered_log(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    """Log lines rendered as ``PROXY_LOG_FORMAT`` renders them, into a buffer."""
    previous = structlog.get_config()
    buffer = io.StringIO()
    structlog.configure(
        processors=log_processors(request.param),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(buffer),
        cache_logger_on_first_use=False,
    )
    try:
        yield request.param, buffer
    finally:
        structlog.configure(**previous)


def unprintable(text: str) -> set[str]:
    return {char for char in text if not char.isprintable() and char != "\n"}


async def test_control_characters_from_the_path_are_escaped(
    fakehub: FakeHub, make_proxy: ProxyFactory, rendered_log: tuple[str, io.StringIO]
) -> None:
    log_format, buffer = rendered_log
    client = await make_proxy(fakehub)
    response = await client.get(CONTROL_PATH)
    assert 400 <= response.status < 500
    await response.read()
    text = buffer.getvalue()
    [line] = [line for line in text.splitlines() if "request" in line and "/v2/" in line]
    assert unprintable(text) == set(), text
    path = json.loads(line)["path"] if log_format == "json" else line
    assert "\\x1b[2J\\x1b]0;owned\\x07/x\\r\\nforged" in path
    assert len(text.splitlines()) == len([t for t in text.splitlines() if t.strip()])
