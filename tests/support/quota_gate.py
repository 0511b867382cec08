"""A pull quota in front of a real registry, as Docker Hub keeps one.

``QuotaGate`` is an HTTP reverse proxy on 127.0.0.1 (its own thread and event loop) that passes
every request to the registry behind it, except that manifest GETs (Docker Hub's counted pulls)
spend from ``remaining``: with nothing left they get ``429 TOOMANYREQUESTS`` with ``Retry-After``,
as Docker Hub answers. HEADs and blob GETs are never counted, as on Docker Hub. It counts what
it forwarded, so a test can tell how many pulls were spent.

    with QuotaGate(upstream.url) as gate:
        proxy = proxy_factory(upstream_url=gate.url)
        gate.remaining = 0           # the account is out of pulls
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Self

import aiohttp
from aiohttp import web

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class QuotaGate:
    def __init__(self, upstream_url: str, *, remaining: int = 1000, retry_after: int = 1) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.remaining = remaining
        self.retry_after = retry_after
        self.counts: Counter[tuple[str, str, int]] = Counter()  # (method, kind, status)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="quota-gate", daemon=True)
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, kind: str, status: int | None = None) -> int:
        """Requests forwarded (or refused) by method, kind ("manifest", "blob", "other")."""
        with self._lock:
            return sum(
                n
                for (m, k, s), n in self.counts.items()
                if m == method and k == kind and (status is None or s == status)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the quota gate did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- forwarding -----------------------------------------------------------------------------

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        kind = (
            "manifest"
            if "/manifests/" in request.path
            else "blob"
            if "/blobs/" in request.path
            else "other"
        )
        if request.method == "GET" and kind == "manifest":
            with self._lock:
                refuse = self.remaining <= 0
            if refuse:
                self._record(request.method, kind, 429)
                body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "pull limit reached"}]}
                return web.json_response(
                    body, status=429, headers={"Retry-After": str(self.retry_after)}
                )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream_url + request.rel_url.raw_path_qs,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            if request.method == "GET" and kind == "manifest" and upstream.status == 200:
                with self._lock:
                    self.remaining -= 1
            self._record(request.method, kind, upstream.status)
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP},
            )
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(256 * 1024):
                    await response.write(chunk)
            await response.write_eof()
            return response

    def _record(self, method: str, kind: str, status: int) -> None:
        with self._lock:
            self.counts[(method, kind, status)] += 1
