"""proxy/http/access.py on its own: which address a request comes from behind trusted proxies,
and the CodeBuild address ranges (with the ``codebuild-ranges`` command that prints them).

Through the app (networks, logins, operator endpoints): tests/http/test_access.py.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

from proxy.config import load_settings, parse_networks
from proxy.http.access import AccessPolicy, codebuild_ranges


def test_client_address_is_the_entry_the_load_balancer_added() -> None:
    """The stack's numbers: the balancer and the clients both inside the VPC's 10.80.0.0/16."""
    policy = AccessPolicy(trusted_proxies=parse_networks("10.80.0.0/16"))
    forged = policy.client_address("10.80.1.10", "10.50.0.7, 10.80.5.5")
    assert forged == ipaddress.ip_address("10.80.5.5")
    assert policy.client_address("10.80.1.10", "10.80.5.5") == ipaddress.ip_address("10.80.5.5")


def test_client_address_counts_trusted_hops_from_the_right() -> None:
    policy = AccessPolicy(
        trusted_proxies=parse_networks("10.0.0.0/24, 10.0.1.0/24"), trusted_hops=2
    )
    address = policy.client_address("10.0.0.5", "198.51.100.7, 203.0.113.9, 10.0.1.4")
    assert address == ipaddress.ip_address("203.0.113.9")
    # fewer entries than hops: the first address one of our proxies saw
    assert policy.client_address("10.0.0.5", "203.0.113.9") == ipaddress.ip_address("203.0.113.9")
    # an untrusted peer's header is ignored; a garbled entry is no address at all
    assert policy.client_address("192.0.2.1", "203.0.113.9") == ipaddress.ip_address("192.0.2.1")
    assert policy.client_address("10.0.0.5", "not-an-ip, 10.0.1.4") is None


IP_RANGES: dict[str, object] = {
    "prefixes": [
        {"ip_prefix": "34.228.4.208/28", "region": "us-east-1", "service": "CODEBUILD"},
        {"ip_prefix": "3.5.0.0/16", "region": "us-east-1", "service": "S3"},
        {"ip_prefix": "13.56.32.200/29", "region": "us-west-1", "service": "CODEBUILD"},
        {"ip_prefix": "34.228.4.208/28", "region": "us-east-1", "service": "AMAZON"},
    ],
    "ipv6_prefixes": [
        {"ipv6_prefix": "2600:1f18::/36", "region": "us-east-1", "service": "CODEBUILD"}
    ],
}


def test_codebuild_ranges() -> None:
    assert codebuild_ranges(IP_RANGES, "us-east-1") == ["34.228.4.208/28", "2600:1f18::/36"]
    assert codebuild_ranges(IP_RANGES, "eu-west-1") == []


def test_codebuild_ranges_command(tmp_path: Path) -> None:
    path = tmp_path / "ip-ranges.json"
    path.write_text(json.dumps(IP_RANGES))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "codebuild-ranges",
            str(path),
            "--region",
            "us-east-1",
            "--format",
            "env",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "PROXY_ALLOW_CIDRS=34.228.4.208/28,2600:1f18::/36"
    assert load_settings(
        {"PROXY_ALLOW_CIDRS": result.stdout.strip().split("=", 1)[1]}
    ).access.allow_cidrs
