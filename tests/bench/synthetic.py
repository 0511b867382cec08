"""An upstream registry of synthetic blobs: each exists only as a seed and a size, and its bytes
are generated from a seeded PRNG as they are sent, so nobody holds a big blob in memory."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web

CHUNK = 1024 * 1024


def generated_chunks(seed: int, size: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


@dataclass(frozen=True)
class SyntheticBlob:
    seed: int
    size: int
    digest: str

    @classmethod
    def make(cls, seed: int, size: int) -> SyntheticBlob:
        digest = hashlib.sha256()
        for chunk in generated_chunks(seed, size):
            digest.update(chunk)
        return cls(seed, size, "sha256:" + digest.hexdigest())


class StreamingUpstream:
    """A registry holding nothing but synthetic blobs, streamed as generated; no auth.

    ``async with StreamingUpstream(blobs) as upstream``: listens on 127.0.0.1 (``upstream.url``)
    in the running event loop until the block ends; ``gets`` counts blob GETs.
    """

    def __init__(self, blobs: Sequence[SyntheticBlob]) -> None:
        self.blobs = {blob.digest: blob for blob in blobs}
        self.gets = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> StreamingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in ("/v2", "/v2/"):
            return web.json_response({})
        _, marker, digest = request.path.rpartition("/blobs/")
        blob = self.blobs.get(digest) if marker else None
        if blob is None or request.method not in ("GET", "HEAD"):
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        response = web.StreamResponse(
            headers={"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        )
        response.content_length = blob.size
        await response.prepare(request)
        if request.method == "GET":
            self.gets += 1
            for chunk in generated_chunks(blob.seed, blob.size):
                await response.write(chunk)
        await response.write_eof()
        return response
