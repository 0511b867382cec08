"""An in-process fake Docker Hub for fault-injection and request-counting tests.

Two aiohttp apps listen on free loopback ports: the registry (``hub.url``, with its token
service; ``support.fakehub.registry``) and the CDN its blob GETs redirect to (``hub.cdn_url``;
``support.fakehub.cdn``). ``FakeHub`` is the three roles tests talk to, each in a module of
its own:

* its content (``support.fakehub.content``): ``add_image``, ``add_multiarch_image``,
  ``add_artifact``, ``add_blob``, ``set_tag``, ... plain state, changeable at any time;
* the record of every request (``support.fakehub.records``): ``count``, ``matching``,
  ``manifest_gets``, ``cdn_gets``, ``wait_for``, ...;
* fault injection (``support.fakehub.faults``): ``inject(kind, ...)``, one mechanism for every
  misbehaviour, scoped to a server, a method, a path fragment, a Range start and a number of
  requests.

Typical use::

    async with FakeHub() as hub:
        image = hub.add_image("library/golang", "1.22", [b"layer one", b"layer two"])
        hub.inject("status", status=429, path_contains="/manifests/", times=1)
        ...  # run the proxy against hub.url
        assert hub.manifest_gets("library/golang") == 2

tests/conftest.py offers it as the ``fakehub`` fixture (default options) and the
``fakehub_factory`` fixture (``await fakehub_factory(users={"u": "p"}, rate_limit=5)``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

from aiohttp import web

from support.fakehub.cdn import Cdn
from support.fakehub.content import HubContent
from support.fakehub.faults import FaultInjection
from support.fakehub.records import RequestLog
from support.fakehub.registry import Registry
from support.fakehub.serving import App


class FakeHub(HubContent, RequestLog, FaultInjection):
    """A fake Docker Hub: registry + token service + CDN, with counters and fault injection.

    The options below are plain attributes: tests may change them while the servers run.
    """

    tags_list_includes_last = False
    """True: ``tags/list?last=T`` lists T itself again, as CNCF distribution 2.8 does (Docker
    Hub and the distribution spec start after T)."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = True,
        require_auth: bool = True,
        token_ttl: int = 300,
        rate_limit: int | None = 100,
        rate_window: int = 21600,
        rate_limit_source: str | None = None,
        retry_after: int = 60,
        redirect_blobs: bool = True,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        strict_blobs: bool = False,
        referrers_api: bool = False,
        referrers_page_size: int | None = None,
    ) -> None:
        """Configure the fake; nothing listens until ``start()`` (or ``async with``).

        users: username -> password accepted by /token with Basic auth.
        allow_anonymous: /token issues tokens to requests without credentials.
        require_auth: the registry demands a bearer token (False: everything is open).
        token_ttl: ``expires_in`` of new tokens, in seconds of ``clock``.
        rate_limit: pulls (manifest GETs) allowed; ``None`` sends no rate-limit headers.
        rate_limit_source: ``docker-ratelimit-source`` value; default: the token's user
            name, or the client's address for anonymous pulls.
        retry_after: Retry-After of 429 answers that do not set their own.
        redirect_blobs: blob GETs answer 307 to the CDN; False serves the bytes directly.
        clock: time source for token expiry, so tests can move time by hand.
        strict_blobs: a repository serves only the blobs added for it (``add_blob(repo=)``,
            the images and artifacts made in it), as a real registry does.
        referrers_api: serve ``/v2/<repo>/referrers/<digest>`` (OCI 1.1), with artifactType
            filtering; False answers 404 like Docker Hub and distribution 2.8.
        referrers_page_size: page the referrers list (``Link: ...; rel="next"``).
        """
        HubContent.__init__(self, strict_blobs=strict_blobs)
        RequestLog.__init__(self)
        FaultInjection.__init__(self, on_hit=self.notify)
        self.users: dict[str, str] = dict(users or {})
        self.allow_anonymous = allow_anonymous
        self.require_auth = require_auth
        self.token_ttl = token_ttl
        self.rate_limit = rate_limit
        self.rate_remaining = rate_limit if rate_limit is not None else 0
        self.rate_window = rate_window
        self.rate_limit_source = rate_limit_source
        self.retry_after = retry_after
        self.redirect_blobs = redirect_blobs
        self.clock = clock
        self.host = host
        self.referrers_api = referrers_api
        self.referrers_page_size = referrers_page_size

        self.registry = Registry(self)
        self.cdn = Cdn(self)
        self.closing = asyncio.Event()
        """Set when the hub closes: held and hung requests are cut off."""
        self._runners: list[web.AppRunner] = []
        self._registry_port: int | None = None
        self._cdn_port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the registry and the CDN on free ports of ``host``."""
        if self._runners:
            raise RuntimeError("FakeHub already started")
        self.closing = asyncio.Event()
        self._registry_port = await self._serve(self.registry)
        self._cdn_port = await self._serve(self.cdn)

    async def close(self) -> None:
        """Stop both apps; held and hung requests are cut off first."""
        self.closing.set()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve(self, app: App) -> int:
        runner = web.AppRunner(app.application(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        address = runner.addresses[-1]
        port = address[1]
        assert isinstance(port, int)
        return port

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """Base URL of the registry, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://{self.registry_host}"

    @property
    def registry_host(self) -> str:
        """``host:port`` of the registry."""
        if self._registry_port is None:
            raise RuntimeError("FakeHub not started")
        return f"{self.host}:{self._registry_port}"

    @property
    def cdn_url(self) -> str:
        """Base URL of the CDN app."""
        if self._cdn_port is None:
            raise RuntimeError("FakeHub not started")
        return f"http://{self.host}:{self._cdn_port}"

    @property
    def token_url(self) -> str:
        """The ``realm`` of the bearer challenge."""
        return f"{self.url}/token"

    def cdn_blob_url(self, digest: str) -> str:
        """The signed CDN URL a blob GET redirects to."""
        return self.cdn_url + self.cdn.path(digest)

    # ------------------------------------------------------------------ rate limit

    def set_rate_limit(self, limit: int | None, remaining: int | None = None) -> None:
        """Change the pull limit; ``remaining`` defaults to the full ``limit``."""
        self.rate_limit = limit
        if limit is None:
            self.rate_remaining = 0
        else:
            self.rate_remaining = limit if remaining is None else remaining
