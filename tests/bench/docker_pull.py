"""Cold pulls by the Docker daemon through its ``registry-mirrors`` entry.

One containerd and one dockerd for the whole benchmark, with their own roots and sockets
(:mod:`support.clients`), and docs/clients/daemon.json pointing the mirror at a fixed loopback
port.  Whatever is measured listens on that port for one pull: registry-proxy, distribution's
proxy, or, for the direct pull, a relay straight to the upstream.

dockerd falls back to registry-1.docker.io when a mirror fails, which would make a broken run
look like a slow one.  Here that cannot happen: the daemon's ``HTTP(S)_PROXY`` is a closed
loopback port (:func:`support.clients.isolated_env`), so any request to another registry is
refused at once and the pull fails; and each pull is checked to have produced the image whose
config the upstream holds.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from support.binaries import missing_binaries
from support.clients import (
    DEBIAN_DOCKER_CLI,
    ClosedPort,
    Containerd,
    Dockerd,
    docker_daemon_config,
    docker_storage_driver,
    isolated_env,
    port_outside_ephemeral_range,
)

from .measure import MeasureError

# What this machine needs besides the documented daemon.json (TESTBED.md).
TESTBED_SETTINGS: dict[str, Any] = {
    "iptables": False,
    "ip-forward": False,
    "ip-masq": False,
    "bridge": "none",
}


def docker_unavailable() -> str | None:
    """Why the Docker daemon rows cannot run here, or None."""
    missing = missing_binaries("dockerd", "containerd", "ctr")
    if missing:
        return f"missing programs: {', '.join(missing)} (apt-get install docker.io containerd)"
    if not DEBIAN_DOCKER_CLI.exists():
        return f"{DEBIAN_DOCKER_CLI} missing (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "dockerd and containerd need root"
    return None


class DockerPuller:
    """dockerd whose only registry is the mirror at 127.0.0.1:``port``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = port_outside_ephemeral_range()
        self._closed: ClosedPort | None = None
        self._containerd: Containerd | None = None
        self._dockerd: Dockerd | None = None

    def __enter__(self) -> DockerPuller:
        try:
            self._closed = ClosedPort()
            env = isolated_env(self._closed)
            self._containerd = Containerd(self.workdir / "containerd", env)
            self._containerd.start()
            settings = {**TESTBED_SETTINGS, "storage-driver": docker_storage_driver()}
            config = docker_daemon_config(f"127.0.0.1:{self.port}", settings)
            self._dockerd = Dockerd(
                self.workdir / "dockerd", self._containerd, config, env, cli=str(DEBIAN_DOCKER_CLI)
            )
            self._dockerd.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dockerd is not None:
            self._dockerd.stop()
        if self._containerd is not None:
            self._containerd.stop()
        if self._closed is not None:
            self._closed.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def cold_pull(self, image: str, config_digest: str) -> float:
        """Empty the daemon's image store, then time ``docker pull IMAGE`` (a Docker Hub name:
        it goes to the mirror); the image must be the one whose config is ``config_digest``."""
        dockerd = self._dockerd
        assert dockerd is not None
        dockerd.reset()
        started = time.monotonic()
        dockerd.docker("pull", image, timeout=900)
        wall = time.monotonic() - started
        image_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        if image_id != config_digest:
            raise MeasureError(f"docker pull {image} gave {image_id}, expected {config_digest}")
        return wall
