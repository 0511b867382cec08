"""A network namespace for a build host, joined to this machine by a veth pair.

Docker treats every registry on 127.0.0.0/8 as insecure (plain HTTP, no certificate checks, no
``certs.d`` client certificates), so a test of a real HTTPS mirror needs the mirror on another
address. The build host (dockerd and the buildspec's commands) runs in a namespace of its own,
``rpcb-<id>``, whose only link is a veth pair to this machine: the namespace gets
``198.51.100.<4k+2>/30``, the machine's end ``198.51.100.<4k+1>/30`` (a documentation range;
the /30 is one no interface uses yet, so parallel runs do not collide), where the TLS front
listens. The namespace has no default route: nothing in it reaches anything but the front, and
dockerd's bridge and iptables rules stay inside it.

Always :meth:`BuildNetwork.close` (a context manager does): it deletes the namespace, which
takes its end of the veth pair, and the pair with it.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from pathlib import Path
from typing import Self

RANGE = ipaddress.IPv4Network("198.51.100.0/24")
NETNS_DIR = Path("/run/netns")
IP_TIMEOUT = 30.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def _addresses_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network configured on an interface of this machine, or routed."""
    networks = []
    for entry in json.loads(_ip("-json", "-4", "addr", "show").stdout or "[]"):
        for info in entry.get("addr_info", []):
            networks.append(ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network)
    for route in json.loads(_ip("-json", "-4", "route", "show").stdout or "[]"):
        destination = route.get("dst", "")
        if destination and destination != "default":
            networks.append(ipaddress.IPv4Network(destination, strict=False))
    return networks


def _free_subnet() -> ipaddress.IPv4Network:
    used = _addresses_in_use()
    candidates = list(RANGE.subnets(new_prefix=30))
    secrets.SystemRandom().shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise RuntimeError(f"no free /30 left in {RANGE}")


class BuildNetwork:
    """``rpcb-<id>`` namespace + veth pair; ``host_address`` on this machine's end,
    ``build_address`` inside the namespace."""

    def __init__(self) -> None:
        suffix = secrets.token_hex(4)
        self.namespace = f"rpcb-{suffix}"
        self.host_link = f"rpcbh{suffix}"  # interface names: at most 15 characters
        self.build_link = f"rpcbn{suffix}"
        subnet = _free_subnet()
        self.host_address = str(subnet.network_address + 1)
        self.build_address = str(subnet.network_address + 2)
        self.prefix = subnet.prefixlen
        self._created = False

    def open(self) -> Self:
        _ip("netns", "add", self.namespace)
        self._created = True
        try:
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.build_link)
            _ip("link", "set", self.build_link, "netns", self.namespace)
            _ip("addr", "add", f"{self.host_address}/{self.prefix}", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            inside = ("netns", "exec", self.namespace, "ip")
            address = f"{self.build_address}/{self.prefix}"
            _ip(*inside, "addr", "add", address, "dev", self.build_link)
            _ip(*inside, "link", "set", self.build_link, "up")
            _ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    @property
    def path(self) -> Path:
        """The namespace's file, for ``nsenter --net=PATH``."""
        return NETNS_DIR / self.namespace

    def close(self) -> None:
        """Delete the namespace (its veth end goes with it, and so the pair); idempotent."""
        if self._created:
            _ip("netns", "delete", self.namespace, check=False)
            self._created = False
        _ip("link", "delete", self.host_link, check=False)  # if the namespace never got it

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
