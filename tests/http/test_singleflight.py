"""Single-flight through the app: a client that leaves does not cancel the fetch the others wait on.

The shared work runs shielded from its callers (``SingleFlight``): when a client disconnects and
its handler is cancelled (aiohttp's test server cancels handlers of lost connections, and so does
a server shutting down), the upstream request it started keeps going for every other client and
for the cache. Were it cancelled, the others would fail, or the upstream would be asked again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.fakehub import FakeHub
from support.faulty_storage import GatedWrites
from support.logwatch import watch_logs
from support.proxy_app import ACCEPT_ALL, ProxyFactory

REPO = "library/golang"


@pytest.mark.parametrize("by", ["digest", "tag"])
async def test_a_client_that_leaves_does_not_cancel_the_shared_fetch(
    fakehub: FakeHub, make_proxy: ProxyFactory, by: str
) -> None:
    image = fakehub.add_image(REPO, "1.22")
    client = await make_proxy(fakehub)
    path = f"/v2/{REPO}/manifests/{image.digest if by == 'digest' else '1.22'}"
    # A cold tag is resolved with a HEAD, a digest fetched with a GET: hold whichever comes first.
    held = fakehub.inject(
        "slow_first_byte",
        method="GET" if by == "digest" else "HEAD",
        path_contains="/manifests/",
        times=1,
    )
    with watch_logs() as logs:
        leaving = asyncio.create_task(client.get(path, headers=ACCEPT_ALL))
        await held.wait_hit()
        staying = asyncio.create_task(client.get(path, headers=ACCEPT_ALL))
        leaving.cancel()  # the first client hangs up while the upstream request is held
        await logs.wait_for(lambda event: event["event"] == "request")  # its handler ended
        held.release()
        response = await asyncio.wait_for(staying, 20)
        assert response.status == 200
        assert await response.read() == image.manifest
    # One upstream fetch (a GET; for a tag, the HEAD and the GET it needed) served the client
    # that stayed and went into the cache: the upstream was not asked again.
    asked = [(r.method, r.status) for r in fakehub.matching(kind="manifest") if r.status != 401]
    assert asked == ([("GET", 200)] if by == "digest" else [("HEAD", 200), ("GET", 200)])
    fakehub.reset_counts()
    again = await client.get(path, headers=ACCEPT_ALL)
    assert await again.read() == image.manifest
    assert fakehub.count(server=None) == 0


async def test_a_request_arriving_while_the_fetched_manifest_is_stored_asks_nothing(
    fakehub: FakeHub, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The fetched manifest is in memory before its storage write ends: a request finding it
    there must find it linked to the repository too, not confirm it with a HEAD (issue 21: what
    made test_a_client_that_leaves_does_not_cancel_the_shared_fetch[digest] flaky)."""
    image = fakehub.add_image(REPO, "1.22")
    storage = GatedWrites(tmp_path / "slow", prefix="manifests/")
    client = await make_proxy(fakehub, storage_backend=storage)
    path = f"/v2/{REPO}/manifests/{image.digest}"
    first = asyncio.create_task(client.get(path, headers=ACCEPT_ALL))
    await asyncio.wait_for(storage.writing.wait(), 10)
    second = await client.get(path, headers=ACCEPT_ALL)
    assert second.status == 200 and await second.read() == image.manifest
    storage.gate.set()
    response = await asyncio.wait_for(first, 10)
    assert response.status == 200 and await response.read() == image.manifest
    asked = [(r.method, r.status) for r in fakehub.matching(kind="manifest") if r.status != 401]
    assert asked == [("GET", 200)]
