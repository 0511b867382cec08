"""What the fake hub's two apps (the registry and the CDN) share.

Each request is recorded before anything else and gets its status as its headers go out; the
faults that act before a response (hang, slow first byte, status) are taken in one place, and
bodies are served in one place: single ranges, then the body faults (ignore_range, wrong_bytes,
drop_mid_blob, pause_mid_blob).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from support.fakehub.faults import Fault, corrupt, hold
from support.fakehub.records import RANGE, RecordedRequest, ServerName

if TYPE_CHECKING:
    from support.fakehub.hub import FakeHub

_ERROR_MESSAGES: dict[str, str] = {
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "NAME_UNKNOWN": "repository name not known to registry",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "BLOB_UNKNOWN": "blob unknown to registry",
    "TAG_INVALID": "manifest tag did not match URI",
    "TOOMANYREQUESTS": (
        "You have reached your pull rate limit. You may increase the limit by "
        "authenticating and upgrading: https://www.docker.com/increase-rate-limit"
    ),
    "PAGINATION_NUMBER_INVALID": "invalid number of results requested",
    "UNSUPPORTED": "The operation is unsupported.",
    "UNAVAILABLE": "service unavailable",
    "UNKNOWN": "unknown error",
    "NOT_FOUND": "not found",
}

_DEFAULT_CODES: dict[int, str] = {
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NOT_FOUND",
    405: "UNSUPPORTED",
    429: "TOOMANYREQUESTS",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}


def error_response(
    status: int,
    code: str,
    *,
    headers: Mapping[str, str] | None = None,
    detail: object = None,
) -> web.Response:
    """A registry errors body (``{"errors": [{"code", "message"}]}``) with ``status``."""
    error: dict[str, object] = {"code": code, "message": _ERROR_MESSAGES.get(code, code)}
    if detail is not None:
        error["detail"] = detail
    return web.json_response({"errors": [error]}, status=status, headers=headers)


class App(ABC):
    """One of the hub's servers: every path goes to ``dispatch``, recorded."""

    name: ServerName

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._entry)
        return app

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        record = self.hub.record(self.name, request)
        response = await self.dispatch(request, record)
        self.finish(record, response)
        return response

    @abstractmethod
    async def dispatch(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        """The answer to one request (faults included)."""

    def finish(self, record: RecordedRequest, response: web.StreamResponse) -> None:
        """Note the status of a response about to go out (unless the fake cut the line)."""
        if not record.aborted and record.status is None:
            record.status = response.status
            self.hub.notify()

    def abort(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        """Cut the connection; aiohttp then fails to write the returned response and drops
        it quietly."""
        record.aborted = True
        self.hub.notify()
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)

    async def faults_before_response(
        self, request: web.Request, record: RecordedRequest
    ) -> web.StreamResponse | None:
        """The hang, slow_first_byte and status faults; None: answer as usual."""
        if self.hub.take_fault(record, "hang") is not None:
            await self.hub.closing.wait()
            return self.abort(request, record)
        slow = self.hub.take_fault(record, "slow_first_byte")
        if slow is not None:
            await hold(slow, self.hub.closing)
            if self.hub.closing.is_set():
                return self.abort(request, record)
        status = self.hub.take_fault(record, "status")
        if status is not None:
            return self._status_fault_response(record, status)
        return None

    def _status_fault_response(self, record: RecordedRequest, fault: Fault) -> web.Response:
        headers: dict[str, str] = {}
        code = fault.code or _DEFAULT_CODES.get(fault.status, "UNKNOWN")
        if fault.status == 429:
            headers["Retry-After"] = str(
                fault.retry_after if fault.retry_after is not None else self.hub.retry_after
            )
        elif fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.status == 401:
            headers["WWW-Authenticate"] = self.hub.registry.challenge(record.repo, "invalid_token")
        if record.kind == "manifest":
            headers.update(self.hub.registry.rate_headers(None))
        return error_response(fault.status, code, headers=headers)

    async def send_body(
        self,
        request: web.Request,
        record: RecordedRequest,
        data: bytes,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Serve ``data`` (with single-range support) and apply the body faults."""
        status = 200
        headers = {**headers, "Accept-Ranges": "bytes"}
        range_header = request.headers.get("Range")
        if (
            range_header is not None
            and request.method == "GET"
            and self.hub.take_fault(record, "ignore_range") is not None
        ):
            range_header = None
        if request.method == "GET" and range_header is not None:
            match = RANGE.match(range_header.strip())
            if match is not None:
                span = _resolve_range(match.group(1), match.group(2), len(data))
                if span is None:
                    return web.Response(
                        status=416, headers={"Content-Range": f"bytes */{len(data)}"}
                    )
                start, end = span
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                data = data[start:end]
                status = 206
        if request.method == "HEAD":
            return web.Response(status=status, body=data, headers=headers)

        if self.hub.take_fault(record, "wrong_bytes") is not None:
            data = corrupt(data)
        cut_fault = self.hub.take_fault(record, "drop_mid_blob")
        if cut_fault is None:
            cut_fault = self.hub.take_fault(record, "pause_mid_blob")
        if cut_fault is None:
            return web.Response(status=status, body=data, headers=headers)

        cut = len(data) // 2 if cut_fault.after_bytes is None else cut_fault.after_bytes
        cut = max(0, min(cut, len(data)))
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        self.finish(record, response)
        await response.prepare(request)
        await response.write(data[:cut])
        if cut_fault.kind == "drop_mid_blob":
            return self.abort(request, record)
        await hold(cut_fault, self.hub.closing)
        if self.hub.closing.is_set():
            return self.abort(request, record)
        await response.write(data[cut:])
        await response.write_eof()
        return response


def _resolve_range(first: str, last: str, size: int) -> tuple[int, int] | None:
    """[start, end) for ``bytes=first-last``, or None when it cannot be satisfied."""
    if first == "":
        if last == "" or int(last) == 0:
            return None
        return max(size - int(last), 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        return None
    return start, end
