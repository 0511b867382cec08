"""The WAN emulator: a TCP relay that makes a loopback upstream look far away.

On loopback the upstream answers so fast that a cold pull looks like a warm one.  This relay sits
between a client (a proxy, or skopeo / dockerd pulling directly) and the upstream registry and
delays every chunk by ``--one-way`` seconds in each direction (0.02 s: a 40 ms round trip), and
paces the upstream-to-client direction of each connection to ``--rate`` bytes per second (25 MB/s),
as one TCP connection over a long link is limited by its window and round trip, not by the line.
Eight connections therefore get eight times the bandwidth, as they would from Docker Hub's CDN.

Run as ``python -m bench.relay --port P --target 127.0.0.1:Q`` (by :class:`RelayProcess`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

from .processes import ModuleServer

RATE = 25_000_000  # bytes per second and connection, upstream to client
ONE_WAY = 0.02  # seconds each way: a 40 ms round trip
READ_SIZE = 64 * 1024


class Relay:
    def __init__(self, target: tuple[str, int], *, rate: float, one_way: float) -> None:
        self.target = target
        self.rate = rate
        self.one_way = one_way

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, pace=False), self._pipe(up_reader, writer, pace=True)
        )

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, pace: bool
    ) -> None:
        """Copy ``source`` to ``sink``, each chunk sent ``one_way`` after it arrived and, when
        ``pace``, not before the previous chunk's share of the rate has passed."""
        loop = asyncio.get_running_loop()
        # Bounded: a slow reader on the far side stops this side reading (TCP back-pressure).
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=32)

        async def take_in() -> None:
            try:
                while chunk := await source.read(READ_SIZE):
                    await queue.put((loop.time(), chunk))
            except OSError:
                pass
            finally:
                await queue.put(None)

        reading = asyncio.create_task(take_in())
        free_at = 0.0
        try:
            while (item := await queue.get()) is not None:
                arrived, chunk = item
                send_at = max(arrived + self.one_way, free_at if pace else 0.0)
                if pace:
                    free_at = send_at + len(chunk) / self.rate
                await asyncio.sleep(max(0.0, send_at - loop.time()))
                sink.write(chunk)
                await sink.drain()
        except OSError:
            pass
        finally:
            reading.cancel()
            sink.close()


async def serve(port: int, relay: Relay) -> None:
    server = await asyncio.start_server(relay.handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


class RelayProcess(ModuleServer):
    """A relay subprocess on 127.0.0.1:``port`` in front of 127.0.0.1:``target_port``."""

    def __init__(
        self,
        workdir: Path,
        target_port: int,
        *,
        port: int | None = None,
        rate: float = RATE,
        one_way: float = ONE_WAY,
    ) -> None:
        args = ["--target", f"127.0.0.1:{target_port}", "--rate", str(rate)]
        super().__init__("bench.relay", [*args, "--one-way", str(one_way)], workdir, port=port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT of the upstream")
    parser.add_argument("--rate", type=float, default=RATE, help="bytes/s per connection")
    parser.add_argument("--one-way", type=float, default=ONE_WAY, help="delay each way, s")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    relay = Relay((host, int(port)), rate=args.rate, one_way=args.one_way)
    asyncio.run(serve(args.port, relay))


if __name__ == "__main__":
    main()
