"""The fake hub's CDN: blob bytes behind the registry's 307 redirect.

A blob GET on the registry answers 307 to a signed URL here (``/cdn/<digest>?sig=...``). The CDN
answers 400 to any request that carries an ``Authorization`` header, which is how a client
leaking the registry token to another host shows up (``hub.cdn_auth_violations``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from aiohttp import web

from support.fakehub.records import RecordedRequest
from support.fakehub.serving import App

if TYPE_CHECKING:
    from support.fakehub.hub import FakeHub


class Cdn(App):
    name = "cdn"

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(hub)
        self._secret = secrets.token_bytes(16)

    def path(self, digest: str) -> str:
        """The signed path and query of a blob on the CDN."""
        return f"/cdn/{digest}?sig={self._sign(digest)}"

    def _sign(self, digest: str) -> str:
        return hmac.new(self._secret, digest.encode(), hashlib.sha256).hexdigest()[:32]

    async def dispatch(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if "Authorization" in request.headers:
            return web.Response(
                status=400,
                text="Only one auth mechanism allowed: the signed URL already authorizes "
                "this request, an Authorization header must not be sent to the CDN",
            )
        held = await self.faults_before_response(request, record)
        if held is not None:
            return held
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="method not allowed")
        if record.kind != "cdn" or record.ref is None:
            return web.Response(status=404, text="not found")
        if not hmac.compare_digest(request.query.get("sig", ""), self._sign(record.ref)):
            return web.Response(status=403, text="bad signature")
        data = self.hub.blobs.get(record.ref)
        if data is None:
            return web.Response(status=404, text="no such object")
        return await self.send_body(
            request, record, data, {"Content-Type": "application/octet-stream"}
        )
