"""The aiohttp application: routes, middlewares, and the resources opened for its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.cache.spool import spool_location
from proxy.config import Settings
from proxy.http import routes
from proxy.http.access import AccessPolicy, access_middleware
from proxy.http.clientcap import CLIENT_CAP, ClientCap, InProgressGauge
from proxy.http.errors import error_response, respond
from proxy.http.shutdown import CLOSE_SECONDS, InFlightRequests, drain
from proxy.ops.cloudwatch import emf_reporting
from proxy.ops.logs import begin_request, new_request_id
from proxy.registry.errors import ErrorCode
from proxy.services import open_services
from proxy.storage import Storage

log = structlog.get_logger("proxy.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Largest request line / header field we accept from clients (registry requests are small).
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
# The status logged and counted for a client that went away before its response was complete
# (nginx's "client closed request"), so that a 5xx means a server fault and nothing else.
CLIENT_CLOSED_REQUEST = 499
# aiohttp's own answers for paths and methods no route takes, as registry errors.
ROUTING_ERRORS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.UNSUPPORTED}


def create_app(
    settings: Settings,
    *,
    storage: Storage | None = None,
    retry_delays: tuple[float, ...] | None = None,
) -> web.Application:
    """Build the app. ``storage`` and ``retry_delays`` let tests swap parts in."""
    policy = AccessPolicy(
        allow=settings.access.allow_cidrs,
        anonymous=settings.access.anonymous_cidrs,
        trusted_proxies=settings.access.trusted_proxies,
        trusted_hops=settings.access.trusted_hops,
        operators=settings.access.operator_cidrs,
        users=settings.access.htpasswd_users,
        tokens=settings.access.auth_tokens,
    )
    requests = InFlightRequests()
    client_cap = ClientCap(settings.listen.max_clients)
    middlewares: list[Middleware] = [
        requests.middleware,
        access_log_middleware,
        error_middleware,
        client_cap.middleware(),
    ]
    if policy.enabled:
        middlewares.append(access_middleware(policy))
    app = web.Application(
        middlewares=middlewares,
        handler_args={"max_line_size": MAX_LINE_SIZE, "max_field_size": MAX_FIELD_SIZE},
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with open_services(
            settings, storage=storage, retry_delays=retry_delays, housekeeping=True
        ) as services:
            app[routes.SERVICES] = services
            # This instance's figures, published for the fleet's status page (proxy/ops/fleet.py).
            publisher = asyncio.create_task(services.fleet.run(), name="fleet publisher")
            services.metrics.registry.register(InProgressGauge(client_cap))
            try:
                yield
            finally:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
                await services.fleet.withdraw()

    async def on_shutdown(app: web.Application) -> None:
        # SIGTERM: aiohttp has stopped accepting connections; downloads and requests in
        # progress get until one deadline to finish (proxy/http/shutdown.py).
        services = app.get(routes.SERVICES)
        if services is not None:
            await services.prefetch.close()  # no new downloads now
            await drain(settings.listen.shutdown_grace, services.blobs, requests)

    app[CLIENT_CAP] = client_cap
    app.cleanup_ctx.append(resources)
    if settings.operations.cloudwatch_namespace is not None:
        app.cleanup_ctx.append(
            emf_reporting(
                settings.operations.cloudwatch_namespace,
                settings.operations.cloudwatch_interval,
                lambda: app[routes.SERVICES].metrics,
                spool_location(settings).path,
                lambda: client_cap.active,
            )
        )
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/healthz/local", routes.healthz_local)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/status", routes.status)
    app.router.add_get("/", routes.status_page)
    app.router.add_get("/ui", routes.status_page)
    app.router.add_route("*", "/v2", routes.api)
    app.router.add_route("*", "/v2/{tail:.*}", routes.api)
    return app


def run_app(app: web.Application, settings: Settings) -> None:
    """Serve ``app`` on ``PROXY_LISTEN`` until SIGTERM or SIGINT, then drain and close."""
    web.run_app(
        app,
        host=settings.listen.host,
        port=settings.listen.port,
        # The drain (proxy/http/shutdown.py) already gave requests the whole grace.
        shutdown_timeout=CLOSE_SECONDS,
        keepalive_timeout=settings.listen.client_idle_timeout,
        access_log=None,
        print=None,
        handle_signals=True,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a registry error response (proxy/http/errors.py); nothing
    escapes as a bare 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status not in ROUTING_ERRORS:
            raise
        return respond(ROUTING_ERRORS[exc.status])
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception as exc:
        api_path = request.get(routes.API_PATH)
        return error_response(exc, api_path.endpoint if api_path is not None else None)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line per request, with what the cache and the upstream did for it."""
    # Correlate with the load balancer's logs when it sent an id; otherwise make one.
    request_id = (request.headers.get("X-Request-Id") or new_request_id())[:64]
    stats = begin_request(request_id)  # every line logged for this request carries the id
    started = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (ConnectionError, asyncio.CancelledError):
            if _client_went_away(request):
                status = CLIENT_CLOSED_REQUEST
            raise
        status = CLIENT_CLOSED_REQUEST if request.get(routes.CLIENT_CLOSED) else response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        api_path = request.get(routes.API_PATH)
        duration = time.perf_counter() - started
        route = api_path.endpoint.value if api_path is not None else _route_name(request)
        services = request.app.get(routes.SERVICES)
        if services is not None:
            services.observers.observe_request(
                route,
                request.method,
                status,
                duration,
                stats.cache,
                getattr(api_path, "name", None),
                getattr(api_path, "reference", None),
                response.headers.get("Warning") if response is not None else None,
            )
        log.info(
            "request",
            method=request.method,
            path=request.path,
            repository=getattr(api_path, "name", None) or None,
            reference=getattr(api_path, "reference", None) or None,
            status=status,
            bytes=_bytes_sent(request, response),
            cache=stats.cache,
            upstream_requests=stats.upstream_requests,
            duration_ms=round(duration * 1000, 1),
            aborted=request.get(routes.ABORTED),
            request_id=request_id,
            remote=request.remote,
        )


def _client_went_away(request: web.Request) -> bool:
    """Whether the client's connection is gone (rather than the server failing).

    Writing to a client that disconnected raises ConnectionResetError; with aiohttp's
    handler_cancellation on, the handler is cancelled instead, after the connection was lost.
    """
    transport = request.transport
    return transport is None or transport.is_closing()


def _route_name(request: web.Request) -> str:
    """A bounded label for requests outside the registry API (never the raw path)."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    if canonical in ("/", "/ui"):
        return "ui"
    return (
        canonical.strip("/")
        if canonical in ("/healthz", "/healthz/local", "/readyz", "/metrics", "/status")
        else "other"
    )


def _bytes_sent(request: web.Request, response: web.StreamResponse | None) -> int:
    """Body bytes of the response; a web.Response's body is sent after the middlewares return."""
    if response is None or request.method == "HEAD":
        return 0
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        return len(response.body)
    return response.body_length
