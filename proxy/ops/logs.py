"""Logging: structlog configured once, and the per-request statistics the access log reports.

Each request gets a ``RequestStats`` in a context variable. Code deep in the cache or the
upstream client adds to it (``count_upstream_request``, ``mark_cache``) without being handed it, and
the access-log middleware writes one line per request from it. Background fetches started by a
request inherit a copy of the context, so their upstream requests are counted for that request.
The request id lives there too: bound once per request, added to every line logged meanwhile.

Logging runs for every request, so each step of the chain is kept cheap: one context variable read
instead of a scan of the whole context, the timestamp's date and time formatted once per second,
redaction that looks at the keys only when one could be a secret, one JSON encoder reused, and the
lines of one event-loop iteration written to stderr with one system call (``_LineWriter``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import json
import logging
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

import structlog


@dataclass(slots=True)
class RequestStats:
    request_id: str | None = None
    upstream_requests: int = 0
    cache: str = "-"  # "hit", "miss", "stale", or "-" when no cache was involved
    # Set by the registry API's handler: the endpoint (the metrics' route) and what was asked.
    route: str | None = None
    repository: str | None = None
    reference: str | None = None
    # Why the server broke off a response it had begun (headers sent), if it did.
    aborted: str | None = None
    # The client went away before its response was complete (logged as 499).
    client_closed: bool = False


_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar(
    "request_stats", default=None
)


def begin_request(request_id: str | None = None) -> RequestStats:
    stats = RequestStats(request_id)
    _stats.set(stats)
    return stats


def request_stats() -> RequestStats | None:
    """The statistics of the request being served, if any."""
    return _stats.get()


def new_request_id() -> str:
    """32 hex digits. Unique, not secret: the random module's generator is much cheaper than
    uuid4 (a system call and an object per request) and is reseeded in forked children."""
    return random.getrandbits(128).to_bytes(16, "big").hex()


def count_upstream_request() -> None:
    stats = _stats.get()
    if stats is not None:
        stats.upstream_requests += 1


def mark_cache(state: str) -> None:
    stats = _stats.get()
    if stats is not None:
        stats.cache = state


class _Context:
    """The fields every line gets: ``request_id`` (of the request being served, if any),
    ``level``, and ``timestamp``, ISO 8601 in UTC with microseconds
    (``2026-12-01T23:52:33.123456Z``, as structlog's TimeStamper writes it).

    One processor instead of three, and the date and time of day formatted once per second
    instead of a datetime per line.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: object, method: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        stats = _stats.get()
        if stats is not None and stats.request_id is not None:
            event.setdefault("request_id", stats.request_id)
        event["level"] = _LEVEL_NAMES.get(method, method)
        event["timestamp"] = self.timestamp()
        return event

    def timestamp(self) -> str:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = second
        # Six digits of microseconds, zero-padded, without a format specification (cheaper).
        return self._prefix + str(1_000_000 + nanoseconds // 1000)[1:] + "Z"


# Logger methods whose level has another name (as structlog's add_log_level maps them).
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


_SECRET_KEYS = frozenset({"authorization", "password", "token", "access_token", "secret"})


def _redact(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Last line of defence: never write a credential, whatever a caller passed."""
    if _SECRET_KEYS.isdisjoint(map(str.lower, event)):
        return event  # the usual case, checked without a Python-level loop
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


def _json_default(value: object) -> Any:
    return repr(value)


class _JsonRenderer:
    """One JSON object per line, from one reused encoder (json.dumps with options builds a new
    encoder per call). A traceback (``exc_info``) becomes an ``exception`` string first."""

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(default=_json_default).encode

    def __call__(self, logger: object, method: str, event: structlog.types.EventDict) -> str:
        if "exc_info" in event:
            event = structlog.processors.format_exc_info(logger, method, event)
        return self._encode(event)


class _LineWriter:
    """Where log lines go: ``stream``, the lines of one event-loop iteration in one write.

    A busy proxy logs a line per request, and each write to stderr is a system call. Inside a
    running event loop, lines are queued in order and written together by one callback at the
    next iteration. Elsewhere (start-up, the command-line tools) a line is written at once. Lines
    still queued at a normal exit are written by an exit hook; a killed process loses at most the
    lines of its last iteration.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._queued: list[str] = []
        # Worker threads log too (rarely): the queue is shared with them.
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        with self._lock:
            if self._queued:  # a flush is already scheduled
                self._queued.append(message)
                return
        # Looking up the running loop costs a getpid(2): once per iteration, not per line.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(message)
            return
        with self._lock:
            self._queued.append(message)
        loop.call_soon(self.flush)

    # structlog calls the method named like the level.
    log = debug = info = warning = error = critical = exception = msg

    def msg_on_loop(self, message: str, loop: asyncio.AbstractEventLoop) -> None:
        """``msg`` for a caller on ``loop``'s thread (the access line): no lock needed, since
        only a flush (on this thread too) takes the queue away, and no loop lookup."""
        queued = self._queued
        queued.append(message)
        if len(queued) == 1:  # the first line of this iteration: nobody scheduled a flush
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            lines, self._queued = self._queued, []
        if lines:
            self._write("\n".join(lines))

    def _write(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()


def _escape_control_characters(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Write control characters as their escapes (``\\x1b``), in every format.

    Log values carry text from requests (a path with ``%1b[2J`` decodes to an escape sequence):
    raw, it could clear an operator's terminal, recolour it or forge a line of its own. JSON
    would escape it, but a reader of the decoded value (``jq -r``) would get it raw again.
    """
    for key, value in event.items():
        if isinstance(value, str) and not value.isprintable():
            event[key] = "".join(
                char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                for char in value
            )
    return event


class _StdlibBridge(logging.Handler):
    """Library logs (aiohttp, botocore) as one structlog line each, without tracebacks.

    aiohttp logs every malformed client request with a traceback; a scanner would flood the log.
    """

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        structlog.get_logger(record.name).log(
            record.levelno,
            record.getMessage(),
            error=f"{type(error).__name__}: {error}" if error else None,
        )


def log_processors(
    log_format: str, *, colors: bool = False, context: _Context | None = None
) -> list[structlog.types.Processor]:
    """The processor chain of every log line, renderer last: ``json`` or ``console``."""
    processors: list[structlog.types.Processor] = [
        context or _Context(),
        _redact,
        _escape_control_characters,
    ]
    if log_format == "json":
        return [*processors, _JsonRenderer()]
    return [*processors, structlog.dev.ConsoleRenderer(colors=colors)]


def configure_logging(log_format: str, level: str = "info") -> None:
    global _fast_access
    writer = _LineWriter(sys.stderr)
    context = _Context()
    colors = sys.stderr.isatty()
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=log_processors(log_format, colors=colors, context=context),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
    # The access line's own renderer, where it makes the same text (coloured console lines are
    # left to structlog), and only when info lines are written at all.
    fast = threshold <= logging.INFO and not (colors and log_format != "json")
    _fast_access = _AccessLine(log_format, context, writer) if fast else None
    root = logging.getLogger()
    root.handlers = [_StdlibBridge()]
    root.setLevel(logging.WARNING)


def reset_logging() -> None:
    """Back to structlog's defaults (tests that configured logging undo it with this)."""
    global _fast_access
    _fast_access = None
    structlog.reset_defaults()


# --- the access log ------------------------------------------------------------------------

_fast_access: _AccessLine | None = None


def access_log(
    method: str,
    path: str,
    status: int,
    sent: int,
    tenths_ms: int,
    remote: str | None,
    stats: RequestStats,
) -> None:
    """The one line per request: what was asked, the answer, and what the cache and the
    upstream did for it.

    ``tenths_ms``: the duration in tenths of a millisecond (``duration_ms`` in the line).
    Its fields, in this order: ``method``, ``path``, ``repository``, ``reference``, ``status``,
    ``bytes``, ``cache``, ``upstream_requests``, ``duration_ms``, ``aborted``, ``request_id``,
    ``remote``, then ``event`` ("request"), ``level`` and ``timestamp`` as on every line.
    Once ``configure_logging`` has run, the line is rendered by :class:`_AccessLine` (the same
    text structlog's processors would make, made without them); otherwise (tests that configure
    structlog themselves) it goes through structlog like any other event.
    """
    fast = _fast_access
    if fast is not None:
        fast.write(method, path, status, sent, tenths_ms, remote, stats)
        return
    # A logger got each time: structlog caches a bound logger on its proxy at first use, and
    # this path serves whatever configuration is current (tests change it).
    structlog.get_logger("proxy.access").info(
        "request",
        method=method,
        path=path,
        repository=stats.repository or None,
        reference=stats.reference or None,
        status=status,
        bytes=sent,
        cache=stats.cache,
        upstream_requests=stats.upstream_requests,
        duration_ms=tenths_ms / 10,
        aborted=stats.aborted,
        request_id=stats.request_id,
        remote=remote,
    )


def _escaped(value: str) -> str:
    """``value`` as _escape_control_characters leaves it."""
    if value.isprintable():
        return value
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in value
    )


_json_string = json.encoder.encode_basestring_ascii  # the C encoder json.dumps uses


class _AccessLine:
    """The access line rendered straight into its text, JSON or console.

    A request's line is most of what logging costs on a warm request: structlog copies the event
    into a dictionary, runs four processors over it and encodes it with the general JSON encoder.
    The fields of this line are fixed and their types known, so the text is put together from
    them directly: strings through the C JSON string encoder after the same escaping of control
    characters, numbers as ``json`` writes them. No key can be a secret, so no redaction is
    needed. A JSON line's pieces that repeat from request to request (all but the duration, the
    request id and the time) are rendered once and remembered. ``tests/unit/ops/test_logs.py``
    checks the text against structlog's for the same fields, and lines sharing pieces.
    """

    def __init__(self, log_format: str, context: _Context, writer: _LineWriter) -> None:
        self._json = log_format == "json"
        self._context = context
        self._writer = writer
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once seen

    def write(
        self,
        method: str,
        path: str,
        status: int,
        sent: int,
        tenths_ms: int,
        remote: str | None,
        stats: RequestStats,
    ) -> None:
        timestamp = self._context.timestamp()
        # As json and structlog write the float tenths_ms / 10 (its shortest repr), without
        # formatting a float.
        duration_ms = f"{tenths_ms // 10}.{tenths_ms % 10}"
        repository, reference = stats.repository or None, stats.reference or None
        if self._json:
            # Made of pieces that come back request after request (the same manifest asked
            # again, from the same address), each rendered once: only the duration, the
            # request id and the time are new in every line.
            line = (
                _json_head(
                    method, path, repository, reference, status, sent, stats.cache,
                    stats.upstream_requests,
                )
                + duration_ms
                + _json_aborted(stats.aborted)
                + _json(stats.request_id)
                + _json_tail(remote)
                + timestamp
                + '"}'
            )  # fmt: skip
        else:
            # structlog's ConsoleRenderer without colours: the time, the level padded to the
            # longest name, the event padded to 30, then the other keys in alphabetical order.
            line = (
                f"{timestamp} [info     ] request                        "
                f"aborted={_text(stats.aborted)} bytes={sent} cache={stats.cache} "
                f"duration_ms={duration_ms} method={method} path={_text(path)} "
                f"reference={_text(reference)} remote={_text(remote)} "
                f"repository={_text(repository)} request_id={_text(stats.request_id)} "
                f"status={status} upstream_requests={stats.upstream_requests}"
            )
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:  # not on a loop (a test): at once
                self._writer.msg(line)
                return
        self._writer.msg_on_loop(line, loop)


# The access line's pieces remembered (at most this many of each): a few kilobytes each.
LINE_PIECES_MEMO = 4096


@functools.lru_cache(maxsize=LINE_PIECES_MEMO)
def _json_head(
    method: str,
    path: str,
    repository: str | None,
    reference: str | None,
    status: int,
    sent: int,
    cache: str,
    upstream_requests: int,
) -> str:
    """The access line up to the duration's value."""
    # The method is an HTTP token and cache one of a few words: JSON as they are.
    return (
        f'{{"method": "{method}", "path": {_json(path)}, '
        f'"repository": {_json(repository)}, "reference": {_json(reference)}, '
        f'"status": {status}, "bytes": {sent}, "cache": "{cache}", '
        f'"upstream_requests": {upstream_requests}, "duration_ms": '
    )


@functools.lru_cache(maxsize=LINE_PIECES_MEMO)
def _json_aborted(aborted: str | None) -> str:
    """The access line from after the duration to the request id's value."""
    return f', "aborted": {_json(aborted)}, "request_id": '


@functools.lru_cache(maxsize=LINE_PIECES_MEMO)
def _json_tail(remote: str | None) -> str:
    """The access line from after the request id to the timestamp's value."""
    return f', "remote": {_json(remote)}, "event": "request", "level": "info", "timestamp": "'


def _json(value: str | None) -> str:
    if value is None:
        return "null"
    if value.isalnum() and value.isascii():  # a generated request id, an address: as it is
        return '"' + value + '"'
    return _json_text(value)


@functools.lru_cache(maxsize=4096)
def _json_text(value: str) -> str:
    """A string as a JSON value, after the escaping of control characters. Remembered: the
    same paths and names come back request after request."""
    return _json_string(_escaped(value))


_QUOTED = frozenset(" \t=\r\n\"'")


def _text(value: str | None) -> str:
    """A value as structlog's ConsoleRenderer writes it: as is, or its repr when it holds a
    space, a quote, ``=`` or a line break."""
    if value is None:
        return "None"
    value = _escaped(value)
    return repr(value) if not _QUOTED.isdisjoint(value) else value
