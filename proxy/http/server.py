"""Serving the app: connections, the headers of requests, the event loop, signals.

``serve_app`` is ``aiohttp.web.run_app`` with one difference: each connection is handled by
``GuardedRequestHandler``, which bounds what a client may make the proxy hold before its request
even exists, while its request line and headers are still arriving:

- at most ``MAX_HEADER_BYTES`` (32 KiB) of request line and headers, and ``MAX_HEADERS`` (64)
  header lines, each line at most 8190 bytes (aiohttp's own limits);
- at most ``HEADER_TIMEOUT`` (10 s) from the first byte of a request to the end of its headers,
  however slowly the bytes come (a client sending one byte every few seconds is cut off too);
- at most ``PROXY_MAX_CLIENTS`` connections with unfinished headers at once: a cap of their own,
  so that they cannot crowd out requests being served, nor requests the other way round.

A connection over a bound gets a one-line answer (``431``, ``408`` or ``503``) and is closed. A
registry client sends a few hundred bytes of headers in one packet: it never meets these. An
attacker's 300 connections of 1 MB of headers each were 640 MB of memory (and 286 MB after they
left); now each holds at most 32 KiB, and only for 10 s.

aiohttp's own error answers (a malformed request) carry the security headers like every other
response (``proxy/http/edge.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.http.edge import SECURITY_HEADERS

log = structlog.get_logger("proxy.server")

MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 64
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
HEADER_TIMEOUT = 10.0
END_OF_HEADERS = b"\r\n\r\n"
LOG_INTERVAL = 30.0

_REFUSALS = {
    "too_large": b"431 Request Header Fields Too Large",
    "timeout": b"408 Request Timeout",
    "busy": b"503 Service Unavailable",
}


class HeaderGuard:
    """Connections whose request headers are still arriving: how many, and what was refused."""

    def __init__(
        self,
        limit: int,
        *,
        max_bytes: int = MAX_HEADER_BYTES,
        timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.reading = 0
        self.refused = {reason: 0 for reason in _REFUSALS}
        self._logged_at = float("-inf")

    def refuse(self, reason: str, remote: object) -> None:
        self.refused[reason] += 1
        now = asyncio.get_running_loop().time()
        if now - self._logged_at >= LOG_INTERVAL:  # a flood is one line per interval
            self._logged_at = now
            log.warning("client.headers_refused", reason=reason, remote=str(remote), **self.refused)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with bounds on a request's head (see the module docstring).

    Bytes are counted from the first byte of a request until aiohttp's parser has made a
    message of it; a request body is not counted (the parser hands it on as it arrives). What
    follows the last message in one read (the start of a pipelined request) is counted as the
    next request's: ``data.rfind`` of the end of headers can only over-count it.
    Private parts of aiohttp's handler read here: ``_messages`` (the parsed requests waiting
    for the handler, in order) and ``_force_close``, ``_close``, ``_upgraded``; the tests of
    this module fail if a new aiohttp changes them.
    """

    def __init__(self, manager: web.Server, *, guard: HeaderGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_bytes = 0
        self._reading = False  # counted in guard.reading
        self._head_deadline: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload of the last request, while its body arrives

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close or self._upgraded:
            super().data_received(data)
            return
        in_body = self._body is not None and not self._body.is_eof()
        messages = len(self._messages)
        # Parsed first: one read is at most a few hundred KiB, and aiohttp's own limits bound
        # each line; what is bounded here is what piles up over several reads.
        super().data_received(data)
        if len(self._messages) > messages:
            self._request_parsed(data)
        elif not in_body and data and self.transport is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self._guard.max_bytes:
                self._refuse("too_large")
            else:
                self._head_begins()

    def _request_parsed(self, data: bytes) -> None:
        """The parser made one or more messages of what arrived: this head is over.

        What follows the last message's head in this read is the next request's head, unless
        that message has a body: then where it ends is the parser's business, and counting
        starts again with the next read.
        """
        payload = self._messages[-1][1] if self._messages else None
        self._body = payload if payload is not None and payload is not EMPTY_PAYLOAD else None
        if self._body is None and data.endswith(END_OF_HEADERS):
            # The usual case: one whole request head in one read, nothing after it.
            self._head_bytes = 0
            if self._reading or self._head_deadline is not None:
                self._head_ends()
            return
        end = data.rfind(END_OF_HEADERS)
        rest = len(data) - (end + len(END_OF_HEADERS)) if end >= 0 else len(data)
        if self._body is not None or rest <= 0:
            self._head_bytes = 0
            self._head_ends()
        elif rest > self._guard.max_bytes:
            self._refuse("too_large")
        else:
            self._head_bytes = rest
            self._head_begins()

    def _head_begins(self) -> None:
        if self._reading or self.transport is None:
            return
        guard = self._guard
        if guard.reading >= guard.limit:
            self._refuse("busy")
            return
        guard.reading += 1
        self._reading = True
        self._head_deadline = self._loop.call_later(guard.timeout, self._refuse, "timeout")

    def _head_ends(self) -> None:
        if self._reading:
            self._reading = False
            self._guard.reading -= 1
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _refuse(self, reason: str) -> None:
        transport = self.transport
        self._head_ends()
        if transport is None:
            return
        self._guard.refuse(reason, transport.get_extra_info("peername"))
        status = _REFUSALS[reason]
        extra = b"Retry-After: 1\r\n" if reason == "busy" else b""
        transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n"
            b"X-Content-Type-Options: nosniff\r\n" + extra + b"\r\n"
        )
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._head_ends()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        response.headers.update(SECURITY_HEADERS)
        return response


class GuardedServer(web.Server):
    def __init__(self, *args: Any, guard: HeaderGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are handled by ``GuardedRequestHandler``."""

    def __init__(
        self,
        app: web.Application,
        guard: HeaderGuard,
        *,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        handler_cancellation: bool = False,
        **options: Any,
    ) -> None:
        options.setdefault("max_line_size", MAX_LINE_SIZE)
        options.setdefault("max_field_size", MAX_FIELD_SIZE)
        options.setdefault("max_headers", MAX_HEADERS)
        super().__init__(
            app,
            handle_signals=handle_signals,
            shutdown_timeout=shutdown_timeout,
            handler_cancellation=handler_cancellation,
            **options,
        )
        self.guard = guard
        self._handler_options = options  # what aiohttp's server hands each connection handler

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app started, as aiohttp does it
        return GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            guard=self.guard,
            **self._handler_options,
        )


def serve_app(
    app: web.Application,
    guard: HeaderGuard,
    *,
    host: str,
    port: int,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    **runner_options: Any,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down as ``web.run_app`` does."""
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, guard, host, port, runner_options))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            _cancel(loop, {main})
            _cancel(loop, asyncio.all_tasks(loop))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(
    app: web.Application, guard: HeaderGuard, host: str, port: int, options: dict[str, Any]
) -> None:
    runner = GuardedRunner(app, guard, handle_signals=True, **options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()  # until a signal raises GracefulExit out of the loop
    finally:
        await runner.cleanup()


def _cancel(loop: asyncio.AbstractEventLoop, tasks: set[asyncio.Task[Any]]) -> None:
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {"message": "unhandled exception during shutdown", "exception": task.exception()}
            )
