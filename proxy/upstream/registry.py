"""Which upstream registry a request is for, and the repository name to ask it for.

Docker Hub (``docker.io``) is the default and is served at the root, so the proxy works as a Docker
``registry-mirrors`` entry. Other configured registries are reached as ``<host>/<repository>`` in
the path, or with the ``ns=<host>`` query parameter containerd and BuildKit add to mirror
requests. A host that is not configured is refused: the proxy is not an open relay.
"""

from __future__ import annotations

from collections.abc import Iterator

from proxy.config import DOCKER_HUB_ALIASES, DOCKER_HUB_HOST
from proxy.registry.errors import ErrorCode, RegistryError
from proxy.registry.reference import NAME_MAX_LENGTH
from proxy.upstream.client import RegistryClient


class Upstreams:
    def __init__(self, default: RegistryClient, others: dict[str, RegistryClient] | None = None):
        self.default = default
        self.by_host: dict[str, RegistryClient] = {default.host: default, **(others or {})}

    def __iter__(self) -> Iterator[RegistryClient]:
        return iter(self.by_host.values())

    def resolve(self, name: str, ns: str | None) -> tuple[RegistryClient, str]:
        """(client, upstream repository name) for a validated request name and ``ns`` value.

        The upstream name is checked against the length limit again: ``library/`` may have made
        it too long, and an upstream that chokes on it must not be asked at all.
        """
        client, upstream_name = self._route(name, ns)
        if len(upstream_name) > NAME_MAX_LENGTH:
            raise RegistryError(
                ErrorCode.NAME_INVALID,
                f"repository name is over {NAME_MAX_LENGTH} characters upstream",
            )
        return client, upstream_name

    def _route(self, name: str, ns: str | None) -> tuple[RegistryClient, str]:
        first, _, rest = name.partition("/")
        if rest and ("." in first) and first not in DOCKER_HUB_ALIASES:
            return self._configured(first), rest
        if rest and first in DOCKER_HUB_ALIASES:
            name = rest
        if ns and ns.lower() not in DOCKER_HUB_ALIASES:
            return self._configured(ns.lower()), name
        if self.default.host == DOCKER_HUB_HOST and "/" not in name:
            name = f"library/{name}"  # official images: ``golang`` is ``library/golang``
        return self.default, name

    def _configured(self, host: str) -> RegistryClient:
        client = self.by_host.get(host)
        if client is None:
            raise RegistryError(
                ErrorCode.DENIED, f"registry {host} is not configured on this proxy"
            )
        return client
