"""The serve command's start-up lines (proxy/commands/cli.py)."""

from __future__ import annotations

import structlog

from proxy.commands.cli import log_upstream_identities
from proxy.config import load_settings


def test_start_up_says_whom_each_upstream_sees_never_the_token() -> None:
    settings = load_settings(
        {
            "PROXY_UPSTREAM_USERNAME": "hubuser",
            "PROXY_UPSTREAM_PASSWORD": "dckr_pat_s3cr3t",
            "PROXY_EXTRA_UPSTREAMS": "ghcr.io=https://ghcr.io",
        }
    )
    with structlog.testing.capture_logs() as logs:
        log_upstream_identities(settings)
    identities = {
        line["upstream"]: line["account"] for line in logs if line["event"] == "upstream.identity"
    }
    assert identities == {"docker.io": "hubuser", "ghcr.io": "anonymous"}
    assert "dckr_pat_s3cr3t" not in repr(logs)
