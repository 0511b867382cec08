"""proxy/services.py, the composition root: what the parts it wires together must share."""

from __future__ import annotations

from support.fakehub import FakeHub
from support.proxy_app import ProxyFactory

from proxy.http.routes import SERVICES
from proxy.storage.base import KEY_RE


async def test_one_process_has_one_instance_id(fakehub: FakeHub, make_proxy: ProxyFactory) -> None:
    """The fleet record and the last-use records of an instance carry the same id."""
    client = await make_proxy(fakehub)
    services = client.app[SERVICES]
    assert services.fleet.instance_id == services.janitor.last_use.records.instance
    assert KEY_RE.fullmatch(f"access/0000000000-{services.fleet.instance_id}-1")
