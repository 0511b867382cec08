"""The framework's limit: a bare aiohttp registry that serves one image and does nothing else.

It answers what a warm proxy answers, with the same headers as registry-proxy
(``Docker-Distribution-API-Version``, ``Content-Type``, ``Docker-Content-Digest``, ``ETag``, the
security headers, and for blobs ``Accept-Ranges`` and ``Cache-Control``), but with none of a
proxy's work: manifests are bytes in a dict, blobs are ``web.FileResponse`` (sendfile, Range
handled by aiohttp, which puts its own ``ETag`` and ``Last-Modified`` on them), no logging, no
metrics, no middleware.
What registry-proxy does on a warm request costs the difference between its figures and these.

The content is a ``skopeo copy --all ... dir:DIR`` of the image: ``manifest.json`` (what the tag
names), ``<hex>.manifest.json`` for each platform manifest, and one file per blob named by its
hex digest.  Run as ``python -m bench.bare_server --port P --content DIR`` (by
:class:`BareServer`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .processes import ModuleServer

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
# What registry-proxy puts on every response (proxy/http/edge.py), so the bytes are the same.
SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def load_manifests(content: Path, tag: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """``{tag or digest: (bytes, response headers)}`` for every manifest of the copy."""
    manifests: dict[str, tuple[bytes, dict[str, str]]] = {}
    paths = [content / "manifest.json", *content.glob("*.manifest.json")]
    for path in paths:
        body = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {
            **API_VERSION,
            **SECURITY,
            "Content-Type": json.loads(body)["mediaType"],
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
        }
        manifests[digest] = (body, headers)
        if path.name == "manifest.json":
            manifests[tag] = (body, headers)
    return manifests


def make_app(content: Path, repository: str, tag: str) -> web.Application:
    manifests = load_manifests(content, tag)
    blobs = {f"sha256:{p.name}": p for p in content.iterdir() if HEX64.match(p.name)}

    async def base(request: web.Request) -> web.Response:
        return web.json_response({}, headers=API_VERSION)

    async def manifest(request: web.Request) -> web.Response:
        found = manifests.get(request.match_info["reference"])
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        body, headers = found
        return web.Response(body=body, headers=headers)  # aiohttp drops the body for HEAD

    async def blob(request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        path = blobs.get(digest)
        if path is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        headers = {
            **API_VERSION,
            **SECURITY,
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
            "Accept-Ranges": "bytes",
            "Cache-Control": "max-age=31536000",
            "Content-Type": "application/octet-stream",
        }
        return web.FileResponse(path, headers=headers)

    app = web.Application()
    app.router.add_get("/v2/", base)
    app.router.add_get(f"/v2/{repository}/manifests/{{reference}}", manifest)
    app.router.add_get(f"/v2/{repository}/blobs/{{digest}}", blob)
    return app


class BareServer(ModuleServer):
    def __init__(
        self, workdir: Path, content: Path, repository: str, tag: str, *, port: int | None = None
    ) -> None:
        args = ["--content", str(content), "--repository", repository, "--tag", tag]
        super().__init__("bench.bare_server", args, workdir, port=port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--content", type=Path, required=True, help="a skopeo dir: copy")
    parser.add_argument("--repository", default="library/golang")
    parser.add_argument("--tag", default="bench")
    args = parser.parse_args(argv)
    app = make_app(args.content, args.repository, args.tag)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
