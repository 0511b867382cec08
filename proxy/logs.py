"""Logging: structlog configured once, and the per-request statistics the access log reports.

Each request gets a ``RequestStats`` in a context variable. Code deep in the cache or the
upstream client adds to it (``count_upstream_request``, ``mark_cache``) without being handed it, and
the access-log middleware writes one line per request from it. Background fetches started by a
request inherit a copy of the context, so their upstream requests are counted for that request.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from dataclasses import dataclass

import structlog


@dataclass(slots=True)
class RequestStats:
    upstream_requests: int = 0
    cache: str = "-"  # "hit", "miss", "stale", or "-" when no cache was involved


_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar(
    "request_stats", default=None
)


def begin_request() -> RequestStats:
    stats = RequestStats()
    _stats.set(stats)
    return stats


def count_upstream_request() -> None:
    stats = _stats.get()
    if stats is not None:
        stats.upstream_requests += 1


def mark_cache(state: str) -> None:
    stats = _stats.get()
    if stats is not None:
        stats.cache = state


_SECRET_KEYS = frozenset({"authorization", "password", "token", "access_token", "secret"})


def _redact(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Last line of defence: never write a credential, whatever a caller passed."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


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
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        _escape_control_characters,
    ]
    if log_format == "json":
        return [
            *processors,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    return [*processors, structlog.dev.ConsoleRenderer(colors=colors)]


def configure_logging(log_format: str, level: str = "info") -> None:
    structlog.configure(
        processors=log_processors(log_format, colors=sys.stderr.isatty()),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [_StdlibBridge()]
    root.setLevel(logging.WARNING)
