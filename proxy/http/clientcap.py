"""The cap on clients served at once (``PROXY_MAX_CLIENTS``): beyond it, a clean 503.

A client costs the proxy while its request is in progress: a blob transfer holds a socket, an open
file or a storage stream, and up to a chunk of buffered bytes until the client has read it, which
a client that stopped reading never does. Counting requests in progress bounds that, whoever the
clients are (behind a load balancer, connections are shared and say little). A request beyond the
cap gets ``503 UNAVAILABLE`` with ``Retry-After`` at once, which registry clients retry, instead of
a stall or an out-of-memory kill that would end every transfer of the task.

Idle keep-alive connections are not counted: they hold no buffers, and close after
``PROXY_CLIENT_IDLE_TIMEOUT``. Health, readiness and metrics requests are never refused, so a
busy instance is not mistaken for a dead one and restarted, dropping every transfer; nor are
``/status`` and the status page, which operators need most when the instance is full.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.http.errors import HttpError
from proxy.registry.errors import ErrorCode

RETRY_AFTER_SECONDS = "1"


class ClientCap:
    """Counts requests in progress and refuses those beyond ``limit``.

    The edge (``proxy/http/edge.py``) calls ``enter`` and ``leave`` around every request of a
    route that is counted; the probes, ``/metrics``, ``/status`` and the status page are not.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the client cap must be at least 1")
        self.limit = limit
        self.active = 0
        self.refused = 0

    def enter(self) -> None:
        """Count one request in, or raise 503 UNAVAILABLE when the cap is reached."""
        if self.active >= self.limit:
            self.refused += 1
            raise HttpError(
                ErrorCode.UNAVAILABLE,
                f"serving {self.limit} clients already (PROXY_MAX_CLIENTS); retry",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


CLIENT_CAP: web.AppKey[ClientCap] = web.AppKey("client_cap", ClientCap)


class InProgressGauge(Collector):
    """``registry_proxy_requests_in_progress``: the cap's count, read when /metrics is scraped
    (the scaling signal, ``ConcurrentRequests``, is the same count sampled every second)."""

    NAME = "registry_proxy_requests_in_progress"

    def __init__(self, cap: ClientCap) -> None:
        self.cap = cap

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            self.NAME, "Client requests in progress (the client cap's count)", value=self.cap.active
        )
