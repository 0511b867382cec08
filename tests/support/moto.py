"""A real S3 endpoint for tests: ``moto_server`` (from ``moto[server]``) on loopback.

:class:`MotoServer` starts ``moto_server -H 127.0.0.1 -p PORT`` as a subprocess on a free port,
waits (bounded) until it answers HTTP, creates buckets, and stops it by its pid. Its state lives
in the process's memory only: nothing touches disk but its log file.

moto accepts any credentials unless started with ``auth=True`` (``INITIAL_NO_AUTH_ACTION_COUNT=0``:
every request must be signed with an access key moto's IAM knows, so any key is "bad").
:data:`CREDENTIALS` are the fake credentials tests give the AWS credential chain.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from support.binaries import binaries_required, free_port
from support.managed_process import ManagedProcess

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3

#: Fake credentials and region for the standard AWS chain (environment variables).
CREDENTIALS: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: Variables that would make the AWS chain look elsewhere than CREDENTIALS (profiles, SSO,
#: instance metadata) or send the test's requests somewhere else.
CLEARED_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


def moto_server_path() -> str:
    """The ``moto_server`` program next to this Python, or on PATH; skip (or fail) without it."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("moto_server")
    if found:
        return found
    reason = "moto_server not found: pip install 'moto[server]>=5'"
    if binaries_required():
        pytest.fail(f"{reason} (PROXY_TEST_REQUIRE_BINARIES=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def aws_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with CREDENTIALS in place of any other
    AWS configuration: what a subprocess (a proxy under test) should run with."""
    env = dict(os.environ if base is None else base)
    for name in CLEARED_VARIABLES:
        env.pop(name, None)
    env.update(CREDENTIALS)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def unique_bucket_name(stem: str = "test") -> str:
    """A fresh valid bucket name (3-63 characters of a-z, 0-9 and '-')."""
    return f"{stem}-{uuid.uuid4().hex[:16]}"


class MotoServer(ManagedProcess):
    """One ``moto_server`` process. Use as a context manager or call start()/stop()."""

    name = "moto_server"
    start_timeout = START_TIMEOUT
    stop_timeout = STOP_TIMEOUT
    new_session = True

    def __init__(self, *, auth: bool = False, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="moto-")) if workdir is None else workdir
        super().__init__(workdir, workdir / "moto.log")
        self.auth = auth
        self.log_path = self.stdout_path
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [moto_server_path(), "-H", HOST, "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = aws_environment()
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        return env

    def readiness(self) -> str | None:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as reply:
                if reply.status == 200:
                    return None
                return f"HTTP {reply.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            return repr(exc)

    def start(self, timeout: float | None = None) -> None:
        if self.running:
            return
        failure: Exception | None = None
        # The port was free a moment ago; another process may take it first: then moto exits
        # at once and we try again on another port.
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            try:
                super().start(timeout)
            except RuntimeError as exc:
                failure = exc
                continue
            return
        raise RuntimeError(f"moto_server did not start: {failure}")

    def close(self) -> None:
        """Stop, and remove the work dir if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        return super().log_tail(lines)

    # -- S3 helpers (synchronous: for fixtures) -------------------------------------------

    def client(self) -> Any:
        """A (synchronous) botocore S3 client on this server with the fake credentials."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        bucket = name or unique_bucket_name()
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
