"""HTTP handlers for the registry v2 / OCI distribution read API.

Handlers are thin: parse and validate the path, ask the cache, write the response with the headers
registries send. They never talk to storage or the upstream directly.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from aiohttp import web

from proxy.cache.blobs import BlobContent
from proxy.cache.spool import SpoolSpan, probe_spool, spool_location
from proxy.http.edge import SECURITY_HEADERS
from proxy.http.errors import API_VERSION, HttpError
from proxy.http.sendfile import SendfileResponse, StallWatch, cut_off
from proxy.ops.logs import request_stats
from proxy.ops.status_page import PAGE_HEADERS, render_fragment, render_page
from proxy.registry import probe
from proxy.registry.errors import ErrorCode, NotFound, RegistryError
from proxy.registry.manifest import (
    INDEX_TYPES,
    KNOWN_MANIFEST_TYPES,
    OCI_INDEX,
    default_platform_digest,
    parse_accept,
)
from proxy.registry.reference import (
    ApiPath,
    ByteRange,
    Digest,
    Endpoint,
    RangeNotSatisfiable,
    Reference,
    parse_api_path,
    parse_range,
    validate_tag,
)
from proxy.services import Services
from proxy.storage import StorageError
from proxy.upstream.errors import UpstreamError, UpstreamInvalid

log = structlog.get_logger(__name__)

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
READ_METHODS = ("GET", "HEAD")
MAX_TAGS_PAGE = 10_000

# Clients ask for the same paths over and over, and parsing them (regular expressions, frozen
# dataclasses) is a measurable part of a warm request. The results are immutable, and only valid
# input is remembered (a parse error is raised every time, never cached).
PARSE_MEMO_SIZE = 4096
_parse_api_path = functools.lru_cache(maxsize=PARSE_MEMO_SIZE)(parse_api_path)
_parse_reference = functools.lru_cache(maxsize=PARSE_MEMO_SIZE)(Reference.from_url)
_parse_digest = functools.lru_cache(maxsize=PARSE_MEMO_SIZE)(Digest.parse)
# Keyed by the Accept lines as sent: a client sends the same ones with every request.
_parse_accept = functools.lru_cache(maxsize=PARSE_MEMO_SIZE)(parse_accept)


async def api(request: web.Request) -> web.StreamResponse:
    """Every ``/v2/...`` request: dispatch on the parsed path."""
    path = _parse_api_path(request.rel_url.raw_path)
    stats = request_stats()
    if stats is not None:  # for the access line and the metrics
        stats.route, stats.repository = path.endpoint.value, path.name
        stats.reference = path.reference
    if request.method not in READ_METHODS or path.endpoint is Endpoint.UPLOAD:
        raise RegistryError(
            ErrorCode.UNSUPPORTED, "this registry is a read-only pull-through cache"
        )
    if (
        path.name == probe.REPOSITORY
        and path.endpoint in (Endpoint.MANIFEST, Endpoint.BLOB)
        and probe.is_probe(path.name, _namespace(request))
    ):
        return _probe(path)
    services = request.app[SERVICES]
    match path.endpoint:
        case Endpoint.BASE:
            return web.json_response({}, headers=API_VERSION)
        case Endpoint.MANIFEST:
            return await manifest(request, services, path)
        case Endpoint.BLOB:
            return await blob(request, services, path)
        case Endpoint.TAGS:
            return await tags_list(request, services, path)
        case Endpoint.REFERRERS:
            return await referrers(request, services, path)
    raise NotFound()


def _namespace(request: web.Request) -> str | None:
    """The ``ns`` query parameter (containerd and BuildKit mirrors send it), without parsing a
    query string that is not there (most requests have none)."""
    return request.query.get("ns") if request.query_string else None


async def manifest(request: web.Request, services: Services, path: ApiPath) -> web.StreamResponse:
    client, name = services.resolve(path.name, _namespace(request))
    reference = _parse_reference(path.reference)
    head = request.method == "HEAD"
    if head and reference.digest is not None:
        head_found = await services.manifests.head_by_digest(client, name, reference.digest)
        return _manifest_response(head_found.media_type, reference.digest, head_found.size, None)

    found = await services.manifests.get(client, name, reference)
    if reference.tag is not None and found.media_type in INDEX_TYPES:
        accepted = _parse_accept(tuple(request.headers.getall("Accept", ())))
        if accepted is not None and found.media_type not in accepted:
            # A client that cannot read an index gets the linux/amd64 image, as from
            # distribution.
            platform = default_platform_digest(found.data, accepted)
            if platform is not None:
                found = await services.manifests.by_digest(client, name, Digest.parse(platform))
    # Otherwise the manifest goes out as stored whatever the Accept header says: a digest names
    # exactly these bytes, and we cannot convert (nor would a 404 help the client). HEAD and GET
    # answer alike.
    # The reason is a fixed phrase (never text from some client's request): see
    # UpstreamError.reason and Backoff.
    warning = (
        f'110 registry-proxy "served from cache: {found.stale_reason}"'
        if found.stale_reason
        else None
    )
    if not head:
        # The client will ask for this image's blobs next: start fetching them now. (A HEAD by
        # tag is often only a check for a new digest: it prefetches nothing.)
        services.prefetch.manifest_served(client, name, found)
    # aiohttp sends only the headers (with this Content-Length) when the request is a HEAD.
    return _manifest_response(
        found.media_type, found.digest, len(found.data), found.data, warning=warning
    )


def _probe(path: ApiPath) -> web.Response:
    """The probe image (proxy.registry.probe): answered from constants, for any tag; nothing is
    cached, counted as a hit or a miss, or asked of an upstream."""
    if path.endpoint is Endpoint.MANIFEST:
        reference = _parse_reference(path.reference)
        digest = str(reference.digest) if reference.digest is not None else None
        found = probe.manifest(reference.tag, digest)
        if found is None:
            raise NotFound()  # MANIFEST_UNKNOWN (the edge names what is missing)
        return _manifest_response(
            found.media_type, Digest.parse(found.digest), len(found.data), found.data
        )
    found = probe.blob(str(_parse_digest(path.reference)))
    if found is None:
        raise NotFound()  # BLOB_UNKNOWN
    headers = {
        **API_VERSION,
        "Docker-Content-Digest": found.digest,
        "ETag": f'"{found.digest}"',
        "Content-Type": "application/octet-stream",
    }
    return web.Response(status=200, body=found.data, headers=headers)


def _manifest_response(
    media_type: str,
    digest: Digest,
    size: int | None,
    body: bytes | None,
    *,
    warning: str | None = None,
) -> web.Response:
    if media_type not in KNOWN_MANIFEST_TYPES:
        # Never reached (the cache refuses other types); a page must never go out as one.
        raise UpstreamInvalid("not a manifest media type")
    headers = _manifest_headers(media_type, digest.hex)
    if warning:
        headers = {**headers, "Warning": warning.replace("\n", " ")[:500]}
    if body is not None:
        return web.Response(status=200, body=body, headers=headers)
    return _headers_only(headers, size)


@functools.lru_cache(maxsize=PARSE_MEMO_SIZE)
def _manifest_headers(media_type: str, hex_digest: str) -> dict[str, str]:
    """A manifest's response headers, the same for every request (not to be modified)."""
    return {
        **API_VERSION,
        **SECURITY_HEADERS,
        "Content-Type": media_type,
        "Docker-Content-Digest": f"sha256:{hex_digest}",
        "ETag": f'"sha256:{hex_digest}"',
    }


def _headers_only(headers: dict[str, str], size: int | None) -> web.Response:
    """A HEAD answer announcing the entity's length without having its bytes at hand."""
    response = web.Response(status=200, headers=headers)
    if size is not None:
        # aiohttp computes Content-Length from the body; for HEAD we state it ourselves.
        response.headers["Content-Length"] = str(size)
    return response


async def blob(request: web.Request, services: Services, path: ApiPath) -> web.StreamResponse:
    client, name = services.resolve(path.name, _namespace(request))
    digest = _parse_digest(path.reference)
    headers = {
        **API_VERSION,
        **SECURITY_HEADERS,  # sent before the edge sees the response (prepared here)
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
    try:
        return await _send_blob(request, services, content, headers)
    finally:
        content.release()  # the file closed, the blob no longer held from eviction


async def _send_blob(
    request: web.Request, services: Services, content: BlobContent, headers: dict[str, str]
) -> web.StreamResponse:
    if content.redirect_url is not None:
        # The bytes flow from S3 to the client directly (PROXY_BLOB_REDIRECT).
        return web.Response(status=307, headers={**API_VERSION, "Location": content.redirect_url})
    byte_range = None
    if content.size is not None:
        try:
            byte_range = parse_range(request.headers.get("Range"), content.size)
        except RangeNotSatisfiable:
            raise HttpError(
                ErrorCode.RANGE_INVALID,
                f"blob is {content.size} bytes",
                headers={"Content-Range": f"bytes */{content.size}"},
            ) from None
    if content.data is not None:
        return _small_blob_response(services, content.data, byte_range, headers)
    response = SendfileResponse(status=206 if byte_range else 200, headers=headers)
    if byte_range is not None:
        assert content.size is not None
        response.headers["Content-Range"] = byte_range.content_range(content.size)
        response.content_length = byte_range.length
        start, end = byte_range.start, byte_range.end
    else:
        response.content_length = content.size
        start, end = 0, None
    watch: StallWatch | None = None
    try:
        await response.prepare(request)
        if request.transport is not None:
            timeout = services.settings.listen.client_idle_timeout
            watch = StallWatch(request.transport, timeout, functools.partial(_stalled, request))
        if content.file is not None and content.file.file is not None:
            # A blob on local disk: the kernel sends it (sendfile), nothing passes through here.
            assert content.size is not None
            length = content.size - start if end is None else end - start + 1
            await response.send_file(request, content.file.file, start, length)
        elif content.parts is not None:
            # A download in flight: what its spool file holds goes out from there as a cached
            # blob does, copied while the client takes it, by sendfile while it does not.
            async for part in content.parts(start, end):
                if isinstance(part, SpoolSpan):
                    await response.send_file(request, part.file, part.offset, part.count)
                else:
                    await response.write(part)
        else:
            async for chunk in content.read(start, end):
                await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        # The client went away: not a server fault. Returning (instead of raising) keeps aiohttp
        # from logging an error with a traceback for every build that is cancelled mid-pull.
        _note(client_closed=True)
        return response
    except Exception as exc:
        # Headers are sent: the only honest thing left is to break the connection, so the client
        # sees a failed transfer instead of a complete response with missing or wrong bytes.
        log.warning("blob.stream_aborted", digest=str(content.digest), reason=str(exc))
        _note(aborted=str(exc))
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        if watch is not None:
            watch.stop()
        services.observers.served_bytes(content.from_cache, response.body_length)
    return response


def _stalled(request: web.Request) -> None:
    """The client took nothing for PROXY_CLIENT_IDLE_TIMEOUT while bytes waited for it: its
    connection is closed, which ends the transfer and frees its place under the client cap."""
    timeout = request.app[SERVICES].settings.listen.client_idle_timeout
    _note(aborted=f"the client read nothing for {timeout:g} s (PROXY_CLIENT_IDLE_TIMEOUT)")
    if request.transport is not None:
        cut_off(request.transport)


def _note(*, client_closed: bool = False, aborted: str | None = None) -> None:
    """Tell the access line how a response that had begun ended."""
    stats = request_stats()
    if stats is not None:
        stats.client_closed = stats.client_closed or client_closed
        stats.aborted = aborted or stats.aborted


def _small_blob_response(
    services: Services, data: bytes, byte_range: ByteRange | None, headers: dict[str, str]
) -> web.Response:
    """A small cached blob, read whole at lookup: headers and body go out in one write."""
    if byte_range is None:
        body = data
    else:
        body = data[byte_range.start : byte_range.end + 1]
        headers = {**headers, "Content-Range": byte_range.content_range(len(data))}
    services.observers.served_bytes(True, len(body))
    return web.Response(status=206 if byte_range else 200, headers=headers, body=body)


async def tags_list(request: web.Request, services: Services, path: ApiPath) -> web.Response:
    """One page of the repository's tags: those after ``last`` (exclusive), at most ``n``.

    The page is cut here, whatever the upstream does with ``last``: CNCF distribution 2.8
    includes ``last`` itself. One tag more than the page is asked for, so that the page is still
    full once ``last`` is dropped, and a tag left over says that another page follows.
    """
    client, name = services.resolve(path.name, _namespace(request))
    raw_n = request.query.get("n")
    # ASCII digits only, and few of them: str.isdigit() admits "²" and int() refuses huge inputs.
    if raw_n is not None and (
        not re.fullmatch(r"[0-9]{1,5}", raw_n) or not 0 < int(raw_n) <= MAX_TAGS_PAGE
    ):
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID, f"n must be an integer from 1 to {MAX_TAGS_PAGE}"
        )
    n = int(raw_n) if raw_n is not None else None
    last = request.query.get("last") or None
    if last is not None:
        validate_tag(last)
    body, upstream_link = await services.tag_lists.get(
        client, name, n + 1 if n is not None else None, last
    )
    document, tags = _tag_document(body)
    if last is not None or n is not None:
        # A page is a slice of the lexically ordered list (distribution 2.8 lists its tags in
        # directory order, and last again).
        tags = sorted(tag for tag in tags if last is None or tag > last)
    headers = {**API_VERSION, "Content-Type": "application/json"}
    if n is not None:
        more = upstream_link is not None or len(tags) > n
        tags = tags[:n]
        if more and tags:
            headers["Link"] = _next_page_link(request, n=str(n), last=tags[-1])
    elif upstream_link:
        # The upstream paginates on its own: point its next page at this proxy's path.
        match = re.match(r"\s*<([^>]*)>", upstream_link)
        if match:
            query = dict(parse_qsl(urlsplit(match.group(1)).query))
            headers["Link"] = _next_page_link(
                request, **{k: v for k, v in query.items() if k in ("n", "last")}
            )
    document["tags"] = tags
    return web.Response(status=200, body=json.dumps(document).encode(), headers=headers)


def _tag_document(body: bytes) -> tuple[dict[str, object], list[str]]:
    """The upstream's tag list document and its tags (distribution sends null for none)."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    tags = document.get("tags") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not (
        tags is None or (isinstance(tags, list) and all(isinstance(t, str) for t in tags))
    ):
        raise UpstreamInvalid("the tag list is not a registry tag list document")
    return document, list(tags or [])


def _next_page_link(request: web.Request, **query: str) -> str:
    """A Link header to the next page on this proxy's own path (``ns`` kept: same upstream)."""
    ns = request.query.get("ns")
    if ns is not None:
        query["ns"] = ns
    return f'<{request.path}?{urlencode(query)}>; rel="next"'


async def referrers(request: web.Request, services: Services, path: ApiPath) -> web.Response:
    """OCI 1.1 referrers of a manifest; 404 when the upstream has no such API (see
    proxy.cache.referrers), which tells clients to use the tag schema instead."""
    client, name = services.resolve(path.name, _namespace(request))
    subject = Digest.parse(path.reference)
    found = await services.referrers.get(
        client, name, subject, request.query.get("artifactType") or None
    )
    headers = {**API_VERSION, "Content-Type": OCI_INDEX}
    if found.filtered:
        headers["OCI-Filters-Applied"] = "artifactType"
    if found.stale_reason:
        headers["Warning"] = f'110 registry-proxy "served from cache: {found.stale_reason}"'
    return web.Response(status=200, body=found.index, headers=headers)


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
        await asyncio.to_thread(probe_spool, location.path)
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
    recent_error = services.storage.recent_error()
    try:
        await services.storage.check()
    except StorageError as exc:
        checks["storage"] = f"failing: {exc}"
        failed = True
    else:
        if recent_error is not None:
            checks["storage"] = f"recent error: {recent_error}"
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
    """JSON for operators: this instance, and the fleet's totals over every live instance."""
    return web.json_response(await status_document(request.app[SERVICES]))


async def status_document(services: Services) -> dict[str, Any]:
    upstreams = {}
    for client in services.upstreams:
        quota = services.quotas.get(client.host)
        upstreams[client.host] = {
            "url": client.settings.url,
            "account": client.settings.username or "anonymous",
            **(quota.as_json() if quota else {"counted_pulls": 0, "ratelimit": None}),
        }
    view = await services.fleet.view()
    return {
        "instance": services.fleet.instance_id,
        "upstreams": upstreams,
        "storage": str(services.settings.storage.location),
        "in_flight_fetches": services.blobs.in_flight + services.manifests.in_flight,
        "storage_errors": services.storage.errors,
        "cache": services.janitor.status(),
        "fleet": {
            "complete": view["complete"],
            "publish_interval": services.fleet.interval,
            **view["totals"],
        },
        "instances": [
            {
                "instance": record["instance"],
                "published_at": record["published_at"],
                "started_at": record.get("started_at"),
                "hits": record.get("hits", 0),
                "misses": record.get("misses", 0),
                "stale": record.get("stale", 0),
                "counted_pulls": sum(
                    int(u.get("counted_pulls") or 0)
                    for u in (record.get("upstreams") or {}).values()
                ),
                "downloads": len(record.get("downloads") or []),
            }
            for record in view["instances"]
        ],
    }


async def status_page(request: web.Request) -> web.Response:
    """The status page: HTML rendered here, refreshed by a few lines of script (no assets)."""
    document = await status_document(request.app[SERVICES])
    fragment = request.query.get("fragment") == "1"
    body = render_fragment(document) if fragment else render_page(document)
    return web.Response(
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", **PAGE_HEADERS},
    )
