"""Which upstream registry a request is for, and the repository name to ask it for.

Docker Hub (``docker.io``) is the default and is served at the root, so the proxy works as a Docker
``registry-mirrors`` entry. Other configured registries are reached as ``<host>/<repository>`` in
the path, or with the ``ns=<host>`` query parameter containerd and BuildKit add to mirror
requests. A host that is not configured is refused: the proxy is not an open relay.
"""

from __future__ import annotations

from collections.abc import Iterator

from proxy.config import DOCKER_HUB_HOST
from proxy.errors import RegistryError
from proxy.upstream.client import RegistryClient

DOCKER_HUB_ALIASES = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})


class Upstreams:
    def __init__(self, default: RegistryClient, others: dict[str, RegistryClient] | None = None):
        self.default = default
        self.by_host: dict[str, RegistryClient] = {default.host: default, **(others or {})}

    def __iter__(self) -> Iterator[RegistryClient]:
        return iter(self.by_host.values())

    def resolve(self, name: str, ns: str | None) -> tuple[RegistryClient, str]:
        """(client, upstream repository name) for a validated request name and ``ns`` value."""
        first, _, rest = name.partition("/")
        if rest and ("." in first) and first not in DOCKER_HUB_ALIASES:
            client = self.by_host.get(first)
            if client is None:
                raise RegistryError(
                    "DENIED", detail=f"registry {first} is not configured on this proxy"
                )
            return client, rest
        if rest and first in DOCKER_HUB_ALIASES:
            name = rest
        if ns and ns.lower() not in DOCKER_HUB_ALIASES:
            client = self.by_host.get(ns.lower())
            if client is None:
                raise RegistryError(
                    "DENIED", detail=f"registry {ns} is not configured on this proxy"
                )
            return client, name
        return self.default, _docker_hub_name(
            name
        ) if self.default.host == DOCKER_HUB_HOST else name


def _docker_hub_name(name: str) -> str:
    """Official images live under library/: ``golang`` is ``library/golang``."""
    return name if "/" in name else f"library/{name}"
