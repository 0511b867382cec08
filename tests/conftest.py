"""Shared fixtures."""

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.fakehub import FakeHub
from support.settings import settings_with

from proxy.config import StorageLocation
from proxy.http.app import create_app
from proxy.storage import Storage


@pytest.fixture
async def fakehub() -> AsyncIterator[FakeHub]:
    """A started FakeHub with default settings (anonymous pulls, auth required, 307s)."""
    async with FakeHub() as hub:
        yield hub


@pytest.fixture
async def fakehub_factory() -> AsyncIterator[Callable[..., Awaitable[FakeHub]]]:
    """``await fakehub_factory(users={"alice": "pw"}, ...)``: started, closed at teardown."""
    hubs: list[FakeHub] = []

    async def make(**options: Any) -> FakeHub:
        hub = FakeHub(**options)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


# --- the proxy under test, in process, against a fake upstream ----------------------------------

ProxyFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_proxy(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    tmp_path: Path,
) -> ProxyFactory:
    """``client = await make_proxy(hub, tag_ttl=0, ...)``: the app on a loopback port.

    Keyword arguments override Settings fields by name, whatever their section
    (``support.settings``); by default the cache lives in a fresh directory under tmp_path
    (``client.app[SERVICES].settings.storage.location.path``), has no size limit, and nothing is
    prefetched (``prefetch=True`` turns it on).
    """
    count = 0

    async def make(
        hub: FakeHub,
        *,
        storage_backend: Storage | None = None,
        username: str | None = None,
        password: str = "",
        **overrides: Any,
    ) -> TestClient[web.Request, web.Application]:
        nonlocal count
        count += 1
        base = settings_with(
            url=hub.url,
            username=username,
            password=password,
            location=StorageLocation(path=tmp_path / f"cache{count}"),
            connect_timeout=2.0,
            read_timeout=5.0,
            # No size limit unless a test sets one: the default follows the free space of the
            # machine's disk, which a test must not depend on.
            limit=None,
            # No prefetch unless a test asks for it: its downloads run in the background after a
            # manifest is served and would race with every test that counts upstream requests
            # or cache hits. Prefetch has its own tests; the e2e suites run the shipped default.
            prefetch=False,
            # No background scrub: tests that damage cached files on purpose must find them so
            # (it has its own tests, which call it).
            scrub_rate=None,
        )
        settings = settings_with(base, **overrides)
        app = create_app(settings, storage=storage_backend, retry_delays=(0.01, 0.01))
        return await aiohttp_client(app)

    return make


# -- S3: a moto server for the whole session (tests/support/moto.py) -------------------------

from collections.abc import Iterator  # noqa: E402

from support.moto import CLEARED_VARIABLES, CREDENTIALS, MotoServer  # noqa: E402


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[MotoServer]:
    """A running ``moto_server`` on loopback (``.endpoint_url``, ``.create_bucket()``), stopped
    at the end of the session. While it runs, the AWS credential chain of this process sees only
    fake credentials (``support.moto.CREDENTIALS``), so no test can reach real AWS."""
    with pytest.MonkeyPatch.context() as patch:
        for name in CLEARED_VARIABLES:
            patch.delenv(name, raising=False)
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with MotoServer() as server:
            yield server
