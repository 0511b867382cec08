"""The log's output: the fields of a line, the request id, redaction, and lines written together
per event-loop iteration."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from proxy.ops.logs import (
    RequestStats,
    access_log,
    begin_request,
    configure_logging,
    log_processors,
    new_request_id,
    reset_logging,
)

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingStream]:
    """JSON logging configured to write to a stream the test reads; undone afterwards."""
    output = CountingStream()
    monkeypatch.setattr(sys, "stderr", output)
    root = logging.getLogger()
    handlers, level = root.handlers, root.level
    configure_logging("json", "info")
    try:
        yield output
    finally:
        reset_logging()
        root.handlers, root.level = handlers, level


def test_a_line_outside_the_event_loop_is_written_at_once(stream: CountingStream) -> None:
    structlog.get_logger("test").info("started", port=5000, password="hunter2")
    [line] = stream.lines()
    assert line["event"] == "started" and line["level"] == "info" and line["port"] == 5000
    assert ISO_UTC.fullmatch(str(line["timestamp"]))
    assert line["password"] == "[redacted]"
    assert "request_id" not in line


async def test_lines_of_one_loop_iteration_go_out_in_one_write(stream: CountingStream) -> None:
    log = structlog.get_logger("test")
    for number in range(5):
        log.info("request", number=number, Authorization="Bearer secret")
    assert stream.getvalue() == ""  # queued until the loop comes round
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [line["number"] for line in stream.lines()] == [0, 1, 2, 3, 4]
    assert stream.writes == 1
    assert all(line["Authorization"] == "[redacted]" for line in stream.lines())


async def test_lines_logged_during_a_request_carry_its_id(stream: CountingStream) -> None:
    async def request(request_id: str) -> None:
        begin_request(request_id)
        await asyncio.sleep(0)
        structlog.get_logger("test").info("inside")

    await asyncio.gather(
        asyncio.create_task(request("first")), asyncio.create_task(request("second"))
    )
    await asyncio.sleep(0)
    assert sorted(str(line["request_id"]) for line in stream.lines()) == ["first", "second"]


def test_request_ids_are_32_hex_digits_and_differ() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


def test_an_exception_is_rendered_into_the_json_line(stream: CountingStream) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("test").exception("request.failed")
    [line] = stream.lines()
    assert line["level"] == "error"
    assert "ValueError: boom" in str(line["exception"])
    assert "exc_info" not in line


# --- the access line: rendered without structlog, the same text --------------------------------

HOSTILE = '/v2/a\x00b\x1b[31m"q"\\\u00e9\u202e\u2028\udcff/manifests/x\ty'


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize(
    "stats",
    [
        RequestStats("id-1", 2, "hit", "manifest", "library/golang", "1.22"),
        RequestStats('id"\\\x1b', 0, "-", aborted="broke\noff \u00e9"),
        RequestStats(None, 0, "stale", "blob", "", ""),
    ],
    ids=["hit", "hostile", "empty"],
)
def test_the_access_line_is_the_text_structlog_writes(
    log_format: str, stats: RequestStats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access line's own renderer (on once logging is configured) writes exactly what the
    structlog processors write for the same fields, every field kept, in the same order."""
    fields = ("GET", HOSTILE, 499, 123_456, 123, None)
    slow = io.StringIO()
    structlog.configure(
        processors=log_processors(log_format),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(slow),
        cache_logger_on_first_use=False,
    )
    try:
        access_log(*fields, stats)
        fast = io.StringIO()
        monkeypatch.setattr(sys, "stderr", fast)
        configure_logging(log_format, "info")
        access_log(*fields, stats)
    finally:
        reset_logging()
    timestamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    expected, got = (timestamp.sub("T", out.getvalue()) for out in (slow, fast))
    assert got == expected
    assert got.count("\n") == 1 and "\x1b" not in got
    if log_format == "json":
        assert list(json.loads(got)) == [
            "method", "path", "repository", "reference", "status", "bytes", "cache",
            "upstream_requests", "duration_ms", "aborted", "request_id", "remote",
            "event", "level", "timestamp",
        ]  # fmt: skip


def test_access_lines_that_share_pieces_keep_each_their_own_fields(
    stream: CountingStream,
) -> None:
    """The JSON line is put together from remembered pieces: lines that differ in any one
    field each show their own value of it, whatever was written before."""
    base: dict[str, Any] = {
        "method": "GET", "path": "/v2/library/golang/manifests/1.22", "status": 200,
        "bytes": 1234, "duration_ms": 0.3, "remote": "10.0.0.1",
        "repository": "library/golang", "reference": "1.22", "cache": "hit",
        "upstream_requests": 0, "aborted": None, "request_id": "a" * 32,
    }  # fmt: skip
    changes: list[dict[str, Any]] = [
        {}, {"method": "HEAD"}, {"path": "/v2/library/golang/manifests/1.23"}, {"status": 404},
        {"bytes": 1235}, {"duration_ms": 12.5}, {"remote": "10.0.0.2"}, {"remote": None},
        {"repository": "library/alpine"}, {"reference": "1.23"}, {"repository": None},
        {"cache": "miss"}, {"upstream_requests": 2}, {"aborted": "the client read nothing"},
        {"request_id": "b" * 32}, {},
    ]  # fmt: skip
    wanted = [{**base, **change} for change in changes]
    for fields in wanted:
        stats = RequestStats(
            fields["request_id"], fields["upstream_requests"], fields["cache"],
            "manifest", fields["repository"], fields["reference"], fields["aborted"],
        )  # fmt: skip
        access_log(
            fields["method"], fields["path"], fields["status"], fields["bytes"],
            round(fields["duration_ms"] * 10), fields["remote"], stats,
        )  # fmt: skip
    lines = stream.lines()
    assert [{key: line[key] for key in base} for line in lines] == wanted


def test_the_access_line_follows_the_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("json", "warning")
    try:
        access_log("GET", "/v2/", 200, 2, 1, "127.0.0.1", RequestStats("x"))
    finally:
        reset_logging()
    assert out.getvalue() == ""


def unprintable(text: str) -> set[str]:
    return {char for char in text if not char.isprintable() and char != "\n"}


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_every_kind_of_unprintable_character_is_escaped(log_format: str) -> None:
    buffer = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(buffer), processors=log_processors(log_format)
    )
    hostile = "a\x00b\x1b[31mc\x7fd\x9be\u202ef\u2028g\udcffh\ti"
    log.info("request\x1b[2J", path=hostile, plain="ok/é/ü path", number=3)
    text = buffer.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert unprintable(text) == set()
    rendered = json.loads(text)["path"] if log_format == "json" else text
    for escape in ("\\x00", "\\x1b[31m", "\\x7f", "\\x9b", "\\u202e", "\\u2028", "\\udcff"):
        assert escape in rendered, escape
    plain = json.loads(text)["plain"] if log_format == "json" else text
    assert "ok/é/ü path" in plain  # printable text, accented letters included, is left alone
