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

import pytest
import structlog

from proxy.ops.logs import begin_request, configure_logging, new_request_id

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
        structlog.reset_defaults()
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
