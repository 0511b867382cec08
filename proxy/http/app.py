"""The aiohttp application: routes, middlewares, and the resources opened for its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.cache.spool import spool_location
from proxy.config import Settings
from proxy.http import routes
from proxy.http.access import AccessPolicy
from proxy.http.apiresource import ApiResource
from proxy.http.clientcap import CLIENT_CAP, ClientCap, InProgressGauge
from proxy.http.edge import Edge, RouteKind, not_found
from proxy.http.server import (
    MAX_FIELD_SIZE,
    MAX_HEADERS,
    MAX_LINE_SIZE,
    HeaderGuard,
    serve_app,
)
from proxy.http.shutdown import CLOSE_SECONDS, InFlightRequests, drain
from proxy.ops.cloudwatch import emf_reporting
from proxy.services import open_services
from proxy.storage import Storage


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
    edge = Edge(policy, client_cap, requests)
    # Limits on a request's head, for any server the app runs on (``serve`` adds the rest of
    # proxy/http/server.py's bounds).
    app = web.Application(
        handler_args={
            "max_line_size": MAX_LINE_SIZE,
            "max_field_size": MAX_FIELD_SIZE,
            "max_headers": MAX_HEADERS,
        },
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with open_services(
            settings, storage=storage, retry_delays=retry_delays, housekeeping=True
        ) as services:
            app[routes.SERVICES] = services
            edge.observers = services.observers
            # This instance's figures, published for the fleet's status page (proxy/ops/fleet.py).
            publisher = asyncio.create_task(services.fleet.run(), name="fleet publisher")
            services.metrics.registry.register(InProgressGauge(client_cap))
            try:
                yield
            finally:
                edge.observers = None
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
    probe, operator = RouteKind.PROBE, RouteKind.OPERATOR
    router = app.router
    router.add_get("/healthz", edge.route("healthz", routes.healthz, probe))
    router.add_get("/healthz/local", edge.route("healthz/local", routes.healthz_local, probe))
    router.add_get("/readyz", edge.route("readyz", routes.readyz, probe))
    router.add_get("/metrics", edge.route("metrics", routes.metrics, operator))
    router.add_get("/status", edge.route("status", routes.status, operator))
    router.add_get("/", edge.route("ui", routes.status_page, operator))
    router.add_get("/ui", edge.route("ui", routes.status_page, operator))
    # /v2 and everything below it, whatever the path holds (line breaks included): every such
    # request goes through the edge, a registry error and a log line if nothing else. Named in
    # the metrics by its registry endpoint (stats.route).
    api = ApiResource()
    api.add_route("*", edge.route("other", routes.api))
    router.register_resource(api)
    # Everything else: a registry error (404, or 405 for a path above with another method).
    router.add_route("*", r"/{tail:[\s\S]*}", edge.route("other", not_found))
    return app


def run_app(app: web.Application, settings: Settings) -> None:
    """Serve ``app`` on ``PROXY_LISTEN`` until SIGTERM or SIGINT, then drain and close, with
    the bounds on requests' heads of proxy/http/server.py."""
    serve_app(
        app,
        HeaderGuard(settings.listen.max_clients),
        host=settings.listen.host,
        port=settings.listen.port,
        # The drain (proxy/http/shutdown.py) already gave requests the whole grace.
        shutdown_timeout=CLOSE_SECONDS,
        keepalive_timeout=settings.listen.client_idle_timeout,
        access_log=None,
    )
