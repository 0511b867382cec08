"""What every request goes through, in one function around its handler.

In order, for each request:

1. It is counted in progress (``InFlightRequests``: shutdown waits for it) and gets a request id
   (the client's ``X-Request-Id``, or a new one) and its statistics (``begin_request``).
2. Beyond ``PROXY_MAX_CLIENTS`` requests at once it is refused with a 503 (``ClientCap``),
   unless its route is always served (probes, ``/metrics``, ``/status``, the status page).
3. Client networks and logins are checked (``AccessPolicy``; the probes are open, the operator
   endpoints have their own rule).
4. The handler answers. Every failure becomes a registry error response here, the one place
   where errors are translated: nothing escapes as a bare 500.
5. Every response not yet sent gets the request id and the security headers
   (``X-Content-Type-Options: nosniff``, and a Content-Security-Policy that runs nothing unless
   the response brings its own, as the status page does).
6. The metrics are counted and one access-log line is written, with what the cache and the
   upstream did for the request.

One function instead of a chain of aiohttp middlewares: aiohttp builds the chain anew for every
request (a ``functools.partial`` and ``update_wrapper`` per middleware) and each link is a
coroutine of its own, which cost more than the checks they made. The route decides once, when the
app is built, which checks apply (``RouteKind``), instead of comparing the path on every request.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import structlog
from aiohttp import web

from proxy.http.access import AccessPolicy
from proxy.http.clientcap import ClientCap
from proxy.http.errors import error_response, respond
from proxy.http.shutdown import InFlightRequests
from proxy.ops.logs import access_log, begin_request, new_request_id
from proxy.ops.observers import Observers
from proxy.registry.errors import ErrorCode, NotFound, RegistryError
from proxy.registry.reference import Endpoint

log = structlog.get_logger("proxy.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EdgeHandler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]

# The status logged and counted for a client that went away before its response was complete
# (nginx's "client closed request"), so that a 5xx means a server fault and nothing else.
CLIENT_CLOSED_REQUEST: Final = 499
REQUEST_ID_MAX = 64
# aiohttp's own answers for paths and methods no route takes, as registry errors.
ROUTING_ERRORS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.UNSUPPORTED}
ENDPOINTS = frozenset(endpoint.value for endpoint in Endpoint)

# Every response: the body is what its Content-Type says, never sniffed into something a browser
# would run, and a page that should never have been one (registry answers are JSON and bytes) runs
# no script and loads nothing. The status page sends a policy of its own.
NOSNIFF: Final = "X-Content-Type-Options"
CSP: Final = "Content-Security-Policy"
SECURITY_HEADERS: Final = {
    NOSNIFF: "nosniff",
    CSP: "default-src 'none'; frame-ancestors 'none'; sandbox",
}


class RouteKind(enum.Enum):
    """Which of the edge's checks a route gets."""

    API = "api"  # counted against the client cap; client networks and logins checked
    PROBE = "probe"  # health and readiness: never refused, open to everyone
    OPERATOR = "operator"  # never refused; the operator rule (PROXY_OPERATOR_CIDRS)


class Edge:
    def __init__(self, policy: AccessPolicy, cap: ClientCap, requests: InFlightRequests) -> None:
        self.policy = policy
        self.cap = cap
        self.requests = requests
        # Set once the services are open (the app's start-up); requests come only after it.
        self.observers: Observers | None = None

    def route(self, label: str, handler: Handler, kind: RouteKind = RouteKind.API) -> EdgeHandler:
        """``handler`` behind the edge. ``label`` names the route in the metrics (the registry
        API's requests are named by their endpoint instead)."""
        policy = self.policy if self.policy.enabled and kind is not RouteKind.PROBE else None
        operator = kind is RouteKind.OPERATOR
        capped = kind is RouteKind.API
        cap, requests = self.cap, self.requests

        async def edge(request: web.Request) -> web.StreamResponse:
            requests.enter()
            request_id = request.headers.get("X-Request-Id")
            request_id = request_id[:REQUEST_ID_MAX] if request_id else new_request_id()
            stats = begin_request(request_id)
            started = time.perf_counter()
            status = 500
            response: web.StreamResponse | None = None
            try:
                try:
                    if capped:
                        cap.enter()
                    try:
                        if policy is not None:
                            await policy.check(request, operator=operator)
                        response = await handler(request)
                    finally:
                        if capped:
                            cap.leave()
                except asyncio.CancelledError:
                    if _client_went_away(request):
                        status = CLIENT_CLOSED_REQUEST
                    raise
                except (ConnectionResetError, TimeoutError) as exc:
                    if isinstance(exc, ConnectionError) and _client_went_away(request):
                        status = CLIENT_CLOSED_REQUEST
                    raise
                except web.HTTPException as exc:
                    if exc.status not in ROUTING_ERRORS:
                        status = exc.status
                        raise
                    response = respond(ROUTING_ERRORS[exc.status])
                except Exception as exc:
                    # The one place a failure becomes an error response (proxy/http/errors.py).
                    endpoint = Endpoint(stats.route) if stats.route in ENDPOINTS else None
                    response = error_response(exc, endpoint)
                status = CLIENT_CLOSED_REQUEST if stats.client_closed else response.status
                if not response.prepared:
                    headers = response.headers
                    headers["X-Request-Id"] = request_id
                    if NOSNIFF not in headers:
                        headers[NOSNIFF] = SECURITY_HEADERS[NOSNIFF]
                    if CSP not in headers:
                        headers[CSP] = SECURITY_HEADERS[CSP]
                return response
            finally:
                requests.leave()
                duration = time.perf_counter() - started
                observers = self.observers
                if observers is not None:
                    observers.observe_request(
                        stats.route or label,
                        request.method,
                        status,
                        duration,
                        stats.cache,
                        stats.repository,
                        stats.reference,
                        response.headers.get("Warning") if response is not None else None,
                    )
                access_log(
                    request.method,
                    request.path,
                    status,
                    _bytes_sent(request, response),
                    round(duration * 10_000),
                    request.remote,
                    stats,
                )

        return edge


def _client_went_away(request: web.Request) -> bool:
    """Whether the client's connection is gone (rather than the server failing).

    Writing to a client that disconnected raises ConnectionResetError; with aiohttp's
    handler_cancellation on, the handler is cancelled instead, after the connection was lost.
    """
    transport = request.transport
    return transport is None or transport.is_closing()


def _bytes_sent(request: web.Request, response: web.StreamResponse | None) -> int:
    """Body bytes of the response; a web.Response's body is sent after the edge returns."""
    if response is None or request.method == "HEAD":
        return 0
    if isinstance(response, web.Response):
        body = response.body
        if isinstance(body, bytes):
            return len(body)
    return response.body_length


async def not_found(request: web.Request) -> web.StreamResponse:
    """Every path no route has: 404, or 405 for a path that exists for other methods."""
    for resource in request.app.router.resources():
        if resource.get_info().get("path") == request.path:
            raise RegistryError(ErrorCode.UNSUPPORTED)
    raise NotFound()
