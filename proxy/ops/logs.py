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


_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar(
    "request_stats", default=None
)


def begin_request(request_id: str | None = None) -> RequestStats:
    stats = RequestStats(request_id)
    _stats.set(stats)
    return stats


def new_request_id() -> str:
    """32 hex digits. Unique, not secret: the random module's generator is much cheaper than
    uuid4 (a system call and an object per request) and is reseeded in forked children."""
    return f"{random.getrandbits(128):032x}"


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
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


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


def log_processors(log_format: str, *, colors: bool = False) -> list[structlog.types.Processor]:
    """The processor chain of every log line, renderer last: ``json`` or ``console``."""
    processors: list[structlog.types.Processor] = [_Context(), _redact, _escape_control_characters]
    if log_format == "json":
        return [*processors, _JsonRenderer()]
    return [*processors, structlog.dev.ConsoleRenderer(colors=colors)]


def configure_logging(log_format: str, level: str = "info") -> None:
    writer = _LineWriter(sys.stderr)
    structlog.configure(
        processors=log_processors(log_format, colors=sys.stderr.isatty()),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [_StdlibBridge()]
    root.setLevel(logging.WARNING)
