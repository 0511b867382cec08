"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for page tests.

No WebDriver and no extra package: Chromium is started with ``--remote-debugging-port=0``, the
port it picked is read from ``DevToolsActivePort`` in its profile directory, and commands go over
a websocket with aiohttp. Only what the tests need: navigate, evaluate JavaScript, set the
viewport, take a screenshot.

    async with Browser.launch(tmp_path) as browser:
        await browser.goto("http://127.0.0.1:5000/")
        title = await browser.evaluate("document.title")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp

from support.binaries import require_binaries, stop_process

# The flags a headless Chromium needs on a machine with no network but loopback: without the
# background-networking ones it keeps trying to reach Google's hosts.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], session: aiohttp.ClientSession) -> None:
        self._process = process
        self._session = session
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, workdir: Path) -> AsyncIterator[Browser]:
        binary = require_binaries("chromium")["chromium"]
        process, log = _start_chromium(binary, workdir)
        session = aiohttp.ClientSession()
        browser = cls(process, session)
        try:
            await browser._connect(workdir)
            yield browser
        finally:
            await browser._close()
            await session.close()
            stop_process(process, 10)
            log.close()

    async def _connect(self, workdir: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while (port := _devtools_port(workdir)) is None:
            if self._process.poll() is not None or loop.time() > deadline:
                raise BrowserError(f"chromium did not start: {_log_tail(workdir)}")
            await asyncio.sleep(0.05)
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Log.enable")  # CSP violations are reported here

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self._events.append(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    async def _close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    # --- commands -------------------------------------------------------------------------------

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._socket is not None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._socket.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        async with asyncio.timeout(COMMAND_TIMEOUT):
            answer = await future
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def goto(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""
        self._events.clear()
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:  # noqa: ASYNC109
        """Poll a JavaScript expression until it is truthy (bounded); returns its value."""
        async with asyncio.timeout(timeout):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(0.1)

    async def wait_until(
        self,
        expression: str,
        condition: Callable[[Any], bool],
        timeout: float = 20.0,  # noqa: ASYNC109
    ) -> Any:
        """Poll a JavaScript expression until ``condition(value)`` holds; returns the value."""
        async with asyncio.timeout(timeout):
            while True:
                value = await self.evaluate(expression)
                if condition(value):
                    return value
                await asyncio.sleep(0.1)

    async def set_viewport(self, width: int, height: int) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def screenshot(self, path: Path) -> tuple[int, int]:
        """Write a PNG of the viewport; returns its (width, height) read from the file."""
        result = await self.send("Page.captureScreenshot", format="png")
        data = base64.b64decode(result["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return png_size(data)

    def console_errors(self) -> list[str]:
        """Console errors and exceptions seen so far (CSP violations among them)."""
        errors = []
        for event in self._events:
            if event["method"] == "Runtime.exceptionThrown":
                errors.append(str(event["params"]["exceptionDetails"].get("text")))
            elif event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] in (
                "error",
                "assert",
            ):
                errors.append(str(event["params"].get("args")))
            elif event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == (
                "error"
            ):
                errors.append(str(event["params"]["entry"].get("text")))
        return errors


def _start_chromium(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    log = (workdir / "chromium.log").open("wb")
    process = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    return process, log


def _devtools_port(workdir: Path) -> int | None:
    """The port Chromium chose, once it has written it into its profile directory."""
    try:
        text = (workdir / "chromium-profile" / "DevToolsActivePort").read_text()
    except FileNotFoundError:
        return None
    first = text.split()[0] if text.split() else ""
    return int(first) if first.isdigit() else None


def _log_tail(workdir: Path) -> str:
    return (workdir / "chromium.log").read_text(errors="replace")[-2000:]


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise BrowserError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
