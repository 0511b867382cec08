"""HTTP handlers for the registry v2 / OCI distribution read API.

Handlers are thin: parse and validate the path, ask the cache, write the response with the headers
registries send. They never talk to storage or the upstream directly.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qsl, urlsplit

import structlog
from aiohttp import web

from proxy.errors import RegistryError
from proxy.manifest import INDEX_TYPES, default_platform_digest, parse_accept
from proxy.reference import (
    ApiPath,
    Digest,
    Endpoint,
    RangeNotSatisfiable,
    Reference,
    parse_api_path,
    parse_range,
    validate_tag,
)
from proxy.services import Services
from proxy.spool import probe_writable, spool_location
from proxy.upstream.errors import UpstreamError, registry_error

log = structlog.get_logger(__name__)

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
API_PATH: web.RequestKey[ApiPath] = web.RequestKey("api_path", ApiPath)
ABORTED: web.RequestKey[str] = web.RequestKey("aborted", str)
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
READ_METHODS = ("GET", "HEAD")
MAX_TAGS_PAGE = 10_000


async def api(request: web.Request) -> web.StreamResponse:
    """Every ``/v2/...`` request: dispatch on the parsed path."""
    path = parse_api_path(request.rel_url.raw_path)
    request[API_PATH] = path
    if request.method not in READ_METHODS or path.endpoint is Endpoint.UPLOAD:
        raise RegistryError("UNSUPPORTED", detail="this registry is a read-only pull-through cache")
    services = request.app[SERVICES]
    try:
        match path.endpoint:
            case Endpoint.BASE:
                return web.json_response({}, headers=API_VERSION)
            case Endpoint.MANIFEST:
                return await manifest(request, services, path)
            case Endpoint.BLOB:
                return await blob(request, services, path)
            case Endpoint.TAGS:
                return await tags_list(request, services, path)
    except UpstreamError as exc:
        not_found = {
            Endpoint.MANIFEST: "MANIFEST_UNKNOWN",
            Endpoint.BLOB: "BLOB_UNKNOWN",
        }.get(path.endpoint, "NAME_UNKNOWN")
        raise registry_error(exc, not_found_code=not_found) from exc
    raise RegistryError("NOT_FOUND")


async def manifest(request: web.Request, services: Services, path: ApiPath) -> web.StreamResponse:
    client, name = services.upstreams.resolve(path.name, request.query.get("ns"))
    reference = Reference.parse(path.reference)
    head = request.method == "HEAD"
    if head and reference.digest is not None:
        media_type, size = await services.manifests.head_by_digest(client, name, reference.digest)
        return _manifest_response(media_type, reference.digest, size, None)

    found = await services.manifests.get(client, name, reference)
    accepted = parse_accept(request.headers.getall("Accept", []))
    if accepted is not None and found.media_type not in accepted:
        # A client that cannot read an index gets the linux/amd64 image, as from distribution.
        platform = (
            default_platform_digest(found.data, accepted)
            if found.media_type in INDEX_TYPES
            else None
        )
        if platform is None:
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                detail=f"manifest is {found.media_type}, which the client does not accept",
            )
        found = await services.manifests.by_digest(client, name, Digest.parse(platform))
    warning = (
        f'110 registry-proxy "served from cache: upstream failed: {found.stale_reason}"'
        if found.stale_reason
        else None
    )
    # aiohttp sends only the headers (with this Content-Length) when the request is a HEAD.
    return _manifest_response(
        found.media_type, found.digest, len(found.data), found.data, warning=warning
    )


def _manifest_response(
    media_type: str,
    digest: Digest,
    size: int,
    body: bytes | None,
    *,
    warning: str | None = None,
) -> web.Response:
    headers = {
        **API_VERSION,
        "Content-Type": media_type,
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
    }
    if warning:
        headers["Warning"] = warning.replace("\n", " ")[:500]
    if body is not None:
        return web.Response(status=200, body=body, headers=headers)
    return _headers_only(headers, size)


def _headers_only(headers: dict[str, str], size: int | None) -> web.Response:
    """A HEAD answer announcing the entity's length without having its bytes at hand."""
    response = web.Response(status=200, headers=headers)
    if size is not None:
        # aiohttp computes Content-Length from the body; for HEAD we state it ourselves.
        response.headers["Content-Length"] = str(size)
    return response


async def blob(request: web.Request, services: Services, path: ApiPath) -> web.StreamResponse:
    client, name = services.upstreams.resolve(path.name, request.query.get("ns"))
    digest = Digest.parse(path.reference)
    headers = {
        **API_VERSION,
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
        "Content-Type": "application/octet-stream",
    }
    if request.method == "HEAD":
        size = await services.blobs.stat(client, name, digest)
        return _headers_only(headers, size)

    content = await services.blobs.get(client, name, digest)
    if content.redirect_url is not None:
        # The bytes flow from S3 to the client directly (PROXY_BLOB_REDIRECT).
        return web.Response(status=307, headers={**API_VERSION, "Location": content.redirect_url})
    byte_range = None
    if content.size is not None:
        try:
            byte_range = parse_range(request.headers.get("Range"), content.size)
        except RangeNotSatisfiable:
            raise RegistryError(
                "RANGE_INVALID",
                detail=f"blob is {content.size} bytes",
                headers={"Content-Range": f"bytes */{content.size}"},
            ) from None
    response = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
    if byte_range is not None:
        assert content.size is not None
        response.headers["Content-Range"] = byte_range.content_range(content.size)
        response.content_length = byte_range.length
        start, end = byte_range.start, byte_range.end
    else:
        response.content_length = content.size
        start, end = 0, None
    await response.prepare(request)
    sent = 0
    try:
        async for chunk in content.read(start, end):
            await response.write(chunk)
            sent += len(chunk)
    except (ConnectionResetError, OSError):
        raise  # the client went away
    except Exception as exc:
        # Headers are sent: the only honest thing left is to break the connection, so the client
        # sees a failed transfer instead of a complete response with missing or wrong bytes.
        log.warning("blob.stream_aborted", digest=str(digest), reason=str(exc))
        request[ABORTED] = str(exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        source = "cache" if content.from_cache else "upstream"
        services.metrics.bytes_served.labels(source).inc(sent)
    await response.write_eof()
    return response


async def tags_list(request: web.Request, services: Services, path: ApiPath) -> web.Response:
    client, name = services.upstreams.resolve(path.name, request.query.get("ns"))
    n = request.query.get("n")
    # ASCII digits only, and few of them: str.isdigit() admits "²" and int() refuses huge inputs.
    if n is not None and (not re.fullmatch(r"[0-9]{1,5}", n) or not 0 < int(n) <= MAX_TAGS_PAGE):
        raise RegistryError(
            "PAGINATION_NUMBER_INVALID", detail=f"n must be an integer from 1 to {MAX_TAGS_PAGE}"
        )
    last = request.query.get("last")
    if last is not None and last != "":
        validate_tag(last)
    body, link = await client.tags_list(name, int(n) if n else None, last or None)
    headers = {**API_VERSION, "Content-Type": "application/json"}
    if link:
        # Point the next page at this proxy's path for the repository, keeping the query.
        match = re.match(r"\s*<([^>]*)>(.*)", link)
        if match:
            query = "&".join(
                f"{k}={v}"
                for k, v in parse_qsl(urlsplit(match.group(1)).query)
                if k in ("n", "last")
            )
            headers["Link"] = f"<{request.path}?{query}>{match.group(2)}"
    return web.Response(status=200, body=body, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def healthz_local(request: web.Request) -> web.Response:
    """Liveness plus what this instance needs to serve on its own: a spool it can write.

    The load balancer's check. It leaves out what all instances share (the S3 bucket, the
    upstream): when S3 fails, every instance would fail the check at once and the load balancer
    would route to all of them anyway (or ECS would replace them all); that is an alarm's job.
    """
    location = spool_location(request.app[SERVICES].settings)
    try:
        await asyncio.to_thread(probe_writable, location.path)
    except OSError as exc:
        return web.json_response(
            {"status": "failing", "spool": f"{location.path}: {exc.strerror or exc}"}, status=503
        )
    return web.json_response({"status": "ok", "spool": "writable"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the cache storage answers, and (reported) whether the upstream is reachable.

    An unreachable upstream is reported but does not make the instance unready by default: the
    cache can still serve every build whose images it has, which is the point of serving stale.
    ``?upstream=required`` makes it count, for checks that want the strict meaning.
    """
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    failed = False
    try:
        await services.storage.check()
    except Exception as exc:
        checks["storage"] = f"failing: {exc}"
        failed = True
    else:
        if services.storage_health.recently_failed():
            checks["storage"] = f"recent error: {services.storage_health.last_error}"
            failed = True
        else:
            checks["storage"] = "ok"
    try:
        await services.upstreams.default.ping()
        checks["upstream"] = "ok"
    except UpstreamError as exc:
        checks["upstream"] = f"unreachable: {exc.detail}"
        failed = failed or request.query.get("upstream") == "required"
    return web.json_response(
        {"status": "degraded" if failed else "ok", **checks}, status=503 if failed else 200
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    body = request.app[SERVICES].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def status(request: web.Request) -> web.Response:
    """A small JSON summary for operators: upstream quota, counted pulls, cache activity."""
    services = request.app[SERVICES]
    upstreams = {}
    for client in services.upstreams:
        quota = services.metrics.quotas.get(client.host)
        upstreams[client.host] = {
            "url": client.settings.url,
            "account": client.settings.username or "anonymous",
            **(quota.as_json() if quota else {"counted_pulls": 0, "ratelimit": None}),
        }
    return web.json_response(
        {
            "upstreams": upstreams,
            "storage": str(services.settings.storage),
            "in_flight_fetches": services.blobs.in_flight + services.manifests.in_flight,
            "storage_errors": services.storage_health.errors,
        }
    )
