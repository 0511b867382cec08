"""Fault injection: one mechanism for every way the fake hub misbehaves.

``hub.inject(kind, ...)`` adds a ``Fault`` and returns it. What it does is its kind; where it
applies is its scope; each app takes matching faults at fixed points of a response:

=================== ========================================================== ==============
kind                what a matching request gets                               parameters
=================== ========================================================== ==============
``status``          ``status`` with a registry errors body instead of the real  status, code,
                    answer (429: Retry-After, the hub's default unless given;   retry_after
                    401: a bearer challenge with ``error="invalid_token"``)
``hang``            no answer until the hub closes, then a cut connection
``slow_first_byte`` held before anything is sent, then the real answer          gate, delay
``drop_mid_blob``   headers with the full length, ``after_bytes`` of the body   after_bytes
                    (default: half), then a cut connection
``pause_mid_blob``  headers and ``after_bytes`` (default: half), held, then     after_bytes,
                    the rest                                                    gate, delay
``wrong_bytes``     a body of the right length with one byte flipped (headers
                    unchanged: Docker-Content-Digest still names the real one)
``ignore_range``    a ranged GET answered 200 with the whole body, as a server
                    without Range support does
``no_digest_header`` manifest and blob answers without Docker-Content-Digest
=================== ========================================================== ==============

The first three act before the response (on the registry, the CDN and the token endpoint
alike); the body kinds act wherever bytes are served to a GET: the CDN, the registry's blobs when
redirects are off, and manifests. A held request waits for ``gate`` (``fault.release()``) or
``delay`` seconds, whichever comes first; with neither given a fresh gate is made.

Scope: a fault matches a request when every scope that is set matches: ``server``, ``method``,
``path_contains`` (a substring of the request path: a digest, ``/manifests/latest``, a repository
name) and ``range_start`` (requests whose ``Range: bytes=N-`` starts at that byte: one piece of a
blob fetched in pieces). ``times`` bounds how many requests it affects (``None``: all of them).
Faults apply only to requests that got past authentication: the 401 challenge an
unauthenticated request receives never consumes one, so ``times=1`` means "the first real
attempt" whatever the client's auth dance looks like. Faults are tried in the order added.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from support.fakehub.records import RecordedRequest, ServerName

FaultKind = Literal[
    "status",
    "hang",
    "slow_first_byte",
    "drop_mid_blob",
    "pause_mid_blob",
    "wrong_bytes",
    "ignore_range",
    "no_digest_header",
]

_PARAMETERS: dict[FaultKind, frozenset[str]] = {
    "status": frozenset({"status", "code", "retry_after"}),
    "hang": frozenset(),
    "slow_first_byte": frozenset({"gate", "delay"}),
    "drop_mid_blob": frozenset({"after_bytes"}),
    "pause_mid_blob": frozenset({"after_bytes", "gate", "delay"}),
    "wrong_bytes": frozenset(),
    "ignore_range": frozenset(),
    "no_digest_header": frozenset(),
}
"""The parameters each kind reads; ``inject`` refuses any other, so a test cannot believe it
set something the fault ignores."""

_HELD: frozenset[FaultKind] = frozenset({"slow_first_byte", "pause_mid_blob"})


@dataclass(eq=False)
class Fault:
    """An injected misbehaviour (see the module docstring); made by ``FaultInjection.inject``.

    ``hits`` counts the requests it has affected so far.
    """

    kind: FaultKind
    server: ServerName | None = None
    method: str | None = None
    path_contains: str | None = None
    range_start: int | None = None
    times: int | None = None
    status: int = 500
    code: str | None = None
    retry_after: int | None = None
    delay: float | None = None
    gate: asyncio.Event | None = None
    after_bytes: int | None = None
    hits: int = 0
    _hit: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        if self.kind in _HELD and self.gate is None and self.delay is None:
            self.gate = asyncio.Event()

    @property
    def active(self) -> bool:
        return self.times is None or self.hits < self.times

    def matches(self, record: RecordedRequest) -> bool:
        if self.server is not None and record.server != self.server:
            return False
        if self.method is not None and record.method != self.method.upper():
            return False
        if self.range_start is not None and record.range_start != self.range_start:
            return False
        return self.path_contains is None or self.path_contains in record.path

    def release(self) -> None:
        """Open the gate of a held request (slow_first_byte, pause_mid_blob)."""
        if self.gate is not None:
            self.gate.set()

    # The bound is built in (ASYNC109) so that no test can wait forever by forgetting one.
    async def wait_hit(self, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until the fault has affected ``count`` requests (TimeoutError after timeout)."""
        async with asyncio.timeout(timeout):
            while self.hits < count:
                self._hit.clear()
                await self._hit.wait()

    def _consume(self) -> None:
        self.hits += 1
        self._hit.set()


class FaultInjection:
    """The faults in force, in the order they were added."""

    def __init__(self, on_hit: Callable[[], None]) -> None:
        """``on_hit`` is called whenever a fault affects a request."""
        self.faults: list[Fault] = []
        self._on_hit = on_hit

    def inject(
        self,
        kind: FaultKind,
        *,
        server: ServerName | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        range_start: int | None = None,
        times: int | None = None,
        status: int | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        delay: float | None = None,
        gate: asyncio.Event | None = None,
        after_bytes: int | None = None,
    ) -> Fault:
        """Make a fault of ``kind`` over its scope and put it in force (the module docstring
        says what each kind does and which parameters it reads)."""
        given = {
            "status": status,
            "code": code,
            "retry_after": retry_after,
            "delay": delay,
            "gate": gate,
            "after_bytes": after_bytes,
        }
        unused = sorted(
            name
            for name, value in given.items()
            if value is not None and name not in _PARAMETERS[kind]
        )
        if unused:
            raise TypeError(f"a {kind} fault takes no {', '.join(unused)}")
        if kind == "status" and status is None:
            raise TypeError("a status fault needs its status")
        fault = Fault(
            kind,
            server=server,
            method=method,
            path_contains=path_contains,
            range_start=range_start,
            times=times,
            status=status if status is not None else 500,
            code=code,
            retry_after=retry_after,
            delay=delay,
            gate=gate,
            after_bytes=after_bytes,
        )
        self.faults.append(fault)
        return fault

    def remove_fault(self, fault: Fault) -> None:
        if fault in self.faults:
            self.faults.remove(fault)

    def clear_faults(self) -> None:
        """Remove every fault, releasing the gates of any held request."""
        for fault in self.faults:
            fault.release()
        self.faults.clear()

    def take_fault(self, record: RecordedRequest, kind: FaultKind) -> Fault | None:
        """The first fault of ``kind`` in force for the request, counted as one hit."""
        for fault in self.faults:
            if fault.kind == kind and fault.active and fault.matches(record):
                fault._consume()
                self._on_hit()
                return fault
        return None


async def hold(fault: Fault, closing: asyncio.Event) -> None:
    """Wait for the fault's gate, its delay or ``closing``, whichever comes first."""
    waiters = [asyncio.ensure_future(closing.wait())]
    if fault.gate is not None:
        waiters.append(asyncio.ensure_future(fault.gate.wait()))
    try:
        await asyncio.wait(waiters, timeout=fault.delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def corrupt(data: bytes) -> bytes:
    """``data`` with its middle byte flipped (the wrong_bytes fault)."""
    if not data:
        return data
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
