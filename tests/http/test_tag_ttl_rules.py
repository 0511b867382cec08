"""PROXY_TAG_TTL_RULES: each tag revalidates on its own schedule (fake clock, no sleeps)."""

from __future__ import annotations

from support.clock import use_clock
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, ProxyFactory

from proxy.registry.policy import parse_tag_ttl_rules


async def test_two_tags_of_one_repository_revalidate_on_their_own_schedules(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "latest", [b"latest"])
    fakehub.add_image("library/golang", "1.22.3", [b"release"])
    client = await make_proxy(
        fakehub,
        tag_ttl=300,
        tag_ttl_rules=parse_tag_ttl_rules("*:latest=60,library/*:[0-9]*=86400"),
    )
    clock = use_clock(client)

    async def pull_both() -> None:
        for tag in ("latest", "1.22.3"):
            response = await client.get(f"/v2/golang/manifests/{tag}", headers=ACCEPT_ALL)
            assert response.status == 200
            await response.read()

    def heads(tag: str) -> int:
        return fakehub.count("HEAD", f"/manifests/{tag}", status=200)

    await pull_both()  # both cached and confirmed now
    fakehub.reset_counts()
    schedule = []
    for _ in range(10):  # ten minutes, a pull of both tags every minute
        clock.advance(61)
        await pull_both()
        schedule.append((heads("latest"), heads("1.22.3")))
    # latest (60 s) is asked about every minute; the release tag (a day) never in ten minutes.
    assert schedule == [(n, 0) for n in range(1, 11)]
    assert fakehub.manifest_gets() == 0

    clock.advance(86_400)
    await pull_both()
    assert (heads("latest"), heads("1.22.3")) == (11, 1)


async def test_without_rules_the_default_ttl_holds(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> None:
    fakehub.add_image("library/golang", "latest")
    client = await make_proxy(fakehub, tag_ttl=300)
    clock = use_clock(client)
    path = "/v2/library/golang/manifests/latest"
    assert (await client.get(path, headers=ACCEPT_ALL)).status == 200
    fakehub.reset_counts()
    clock.advance(299)
    assert (await client.get(path, headers=ACCEPT_ALL)).status == 200
    assert fakehub.count(server=None) == 0
    clock.advance(2)
    assert (await client.get(path, headers=ACCEPT_ALL)).status == 200
    assert fakehub.count("HEAD", "/manifests/latest", status=200) == 1
