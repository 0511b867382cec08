"""The capacity section's probe: tiny requests at a steady pace, each one's latency on stdout.

Run as a script of its own (stdlib only), pinned to the proxy's core, so that what it measures
is the proxy's event loop and not the busy core of the clients::

    python capacity_probe.py --port PORT --interval 0.2 PATH [PATH ...]

Each round sends one request per PATH (HEAD, with a registry client's Accept header, over one
keep-alive connection per path) and prints ``SECONDS PATH_INDEX MILLISECONDS STATUS`` per
request, SECONDS being ``time.monotonic()`` when it was sent (the system's monotonic clock, the
one the harness reads too, so its lines can be cut at a step's bounds).  A failed request
prints status 0 and opens a new connection.  It runs until it is terminated.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time

ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
TIMEOUT = 30.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    connections: list[http.client.HTTPConnection | None] = [None] * len(args.paths)
    next_round = time.monotonic()
    while True:
        for index, path in enumerate(args.paths):
            connection = connections[index]
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=TIMEOUT)
                connections[index] = connection
            started = time.monotonic()
            try:
                connection.request("HEAD", path, headers={"Accept": ACCEPT})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connections[index] = None
                status = 0
            elapsed = time.monotonic() - started
            sys.stdout.write(f"{started:.4f} {index} {elapsed * 1000:.3f} {status}\n")
            sys.stdout.flush()
        next_round += args.interval
        time.sleep(max(0.0, next_round - time.monotonic()))


if __name__ == "__main__":
    main()
