"""Content policy through the HTTP API (proxy/registry/policy.py's rules at work; the rules on
their own: tests/unit/registry/test_policy.py).

- Repository allow/deny rules: every route form, both kinds of upstream, tags and digests and
  blobs; a refused repository never causes an upstream request.
- PROXY_TAG_TTL_RULES: each tag revalidates on its own schedule (fake clock, no sleeps).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from support.clock import use_clock
from support.fakehub import FakeHub
from support.proxy_app import ACCEPT_ALL, Client, ProxyFactory

from proxy.config import UpstreamSettings
from proxy.registry.policy import RepositoryRules, parse_repository_patterns, parse_tag_ttl_rules

# Docker Hub's (PROXY_ALLOW_REPOSITORIES, PROXY_DENY_REPOSITORIES)
HUB_RULES = {
    "allow_repositories": parse_repository_patterns("library/*,myorg/*"),
    "deny_repositories": parse_repository_patterns("library/ubuntu"),
}
GHCR_RULES = RepositoryRules(
    deny=parse_repository_patterns("owner/private*"),
    allow_variable="PROXY_UPSTREAM_GHCR_IO_ALLOW_REPOSITORIES",
    deny_variable="PROXY_UPSTREAM_GHCR_IO_DENY_REPOSITORIES",
)


@pytest.fixture
async def hubs(
    fakehub_factory: Callable[..., Awaitable[FakeHub]],
) -> tuple[FakeHub, FakeHub]:
    docker_hub = await fakehub_factory()
    ghcr = await fakehub_factory()
    for repo in ("library/golang", "library/ubuntu", "myorg/app", "bitnami/redis"):
        docker_hub.add_image(repo, "1.0")
    for repo in ("owner/app", "owner/private-thing"):
        ghcr.add_image(repo, "1.0")
    return docker_hub, ghcr


async def make_client(make_proxy: ProxyFactory, hubs: tuple[FakeHub, FakeHub]) -> Client:
    docker_hub, ghcr = hubs
    return await make_proxy(
        docker_hub,
        **HUB_RULES,
        extra=(UpstreamSettings("ghcr.io", ghcr.url, repository_rules=GHCR_RULES),),
    )


# (hub index, upstream repository, request path prefixes that name it)
DOCKER_HUB_FORMS = ("/v2/{repo}", "/v2/docker.io/{repo}", "/v2/{repo}?ns=docker.io")
GHCR_FORMS = ("/v2/ghcr.io/{repo}", "/v2/{repo}?ns=ghcr.io")


def path_for(form: str, repo: str, rest: str) -> str:
    base, _, query = form.format(repo=repo).partition("?")
    return f"{base}/{rest}" + (f"?{query}" if query else "")


def references(hub: FakeHub, repo: str) -> dict[str, str]:
    image = hub.get_manifest(repo, "1.0")
    assert image is not None
    blob = next(d for d, repos in hub.blob_repositories.items() if repo in repos)
    return {
        "tag": "manifests/1.0",
        "digest": f"manifests/{image.digest}",
        "blob": f"blobs/{blob}",
        "tags list": "tags/list",
        "referrers": f"referrers/{image.digest}",
    }


async def assert_refused(client: Client, path: str, variable: str, pattern: str) -> None:
    for method in ("GET", "HEAD"):
        response = await client.request(method, path, headers=ACCEPT_ALL)
        assert response.status == 403, (method, path, await response.text())
        if method == "GET":
            error = (await response.json())["errors"][0]
            assert error["code"] == "DENIED"
            assert variable in error["message"] and pattern in error["message"], error


@pytest.mark.parametrize("form", DOCKER_HUB_FORMS)
@pytest.mark.parametrize(
    ("repo", "variable", "pattern"),
    [
        ("library/ubuntu", "PROXY_DENY_REPOSITORIES", "library/ubuntu"),  # denied (deny wins)
        ("bitnami/redis", "PROXY_ALLOW_REPOSITORIES", "library/*,myorg/*"),  # unmatched
    ],
)
async def test_refused_on_the_default_upstream_without_asking_it(
    make_proxy: ProxyFactory,
    hubs: tuple[FakeHub, FakeHub],
    form: str,
    repo: str,
    variable: str,
    pattern: str,
) -> None:
    docker_hub, ghcr = hubs
    client = await make_client(make_proxy, hubs)
    for rest in references(docker_hub, repo).values():
        await assert_refused(client, path_for(form, repo, rest), variable, pattern)
    assert docker_hub.count(server=None) == 0
    assert ghcr.count(server=None) == 0


@pytest.mark.parametrize("form", GHCR_FORMS)
async def test_refused_on_an_extra_upstream_without_asking_it(
    make_proxy: ProxyFactory, hubs: tuple[FakeHub, FakeHub], form: str
) -> None:
    docker_hub, ghcr = hubs
    client = await make_client(make_proxy, hubs)
    repo = "owner/private-thing"
    for rest in references(ghcr, repo).values():
        await assert_refused(
            client,
            path_for(form, repo, rest),
            "PROXY_UPSTREAM_GHCR_IO_DENY_REPOSITORIES",
            "owner/private*",
        )
    assert ghcr.count(server=None) == 0
    assert docker_hub.count(server=None) == 0


@pytest.mark.parametrize(
    ("hub_index", "repo", "form"),
    [
        (0, "library/golang", "/v2/{repo}"),
        (0, "library/golang", "/v2/docker.io/{repo}"),
        (0, "myorg/app", "/v2/{repo}?ns=docker.io"),
        (1, "owner/app", "/v2/ghcr.io/{repo}"),
        (1, "owner/app", "/v2/{repo}?ns=ghcr.io"),
    ],
)
async def test_allowed_repositories_pull_by_tag_digest_and_blob(
    make_proxy: ProxyFactory,
    hubs: tuple[FakeHub, FakeHub],
    hub_index: int,
    repo: str,
    form: str,
) -> None:
    hub = hubs[hub_index]
    client = await make_client(make_proxy, hubs)
    refs = references(hub, repo)
    for what in ("tag", "digest", "blob", "tags list"):
        response = await client.get(path_for(form, repo, refs[what]), headers=ACCEPT_ALL)
        assert response.status == 200, (what, await response.text())
        await response.read()


async def test_short_names_are_matched_as_library(
    make_proxy: ProxyFactory, hubs: tuple[FakeHub, FakeHub]
) -> None:
    client = await make_client(make_proxy, hubs)
    assert (await client.get("/v2/golang/manifests/1.0", headers=ACCEPT_ALL)).status == 200
    await assert_refused(
        client, "/v2/ubuntu/manifests/1.0", "PROXY_DENY_REPOSITORIES", "library/ubuntu"
    )


async def test_a_cached_blob_is_refused_under_a_denied_repository(
    make_proxy: ProxyFactory, hubs: tuple[FakeHub, FakeHub]
) -> None:
    docker_hub, _ = hubs
    client = await make_client(make_proxy, hubs)
    golang = references(docker_hub, "library/golang")
    response = await client.get(f"/v2/library/golang/{golang['blob']}")
    assert response.status == 200
    await response.read()
    docker_hub.reset_counts()
    # The same bytes are in the cache now; the denied name still gets nothing.
    await assert_refused(
        client, f"/v2/library/ubuntu/{golang['blob']}", "PROXY_DENY_REPOSITORIES", "library/"
    )
    assert docker_hub.count(server=None) == 0


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
