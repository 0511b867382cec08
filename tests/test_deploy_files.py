"""The Dockerfile and docker-compose.yml agree with what the proxy really accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from proxy.config import ENV_VARS, load_settings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_proxy_settings_are_known_and_valid() -> None:
    proxy = compose()["services"]["proxy"]
    env: dict[str, str] = {k: str(v) for k, v in proxy["environment"].items()}
    unknown = {k for k in env if k.startswith("PROXY_") and k not in ENV_VARS}
    assert not unknown, f"docker-compose.yml sets variables the proxy ignores: {unknown}"
    # Interpolated secrets default to empty, which the proxy reads as unset.
    resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    settings = load_settings(resolved)
    assert settings.storage.is_s3
    assert settings.s3_endpoint_url == "http://minio:9000"
    port = settings.listen_port
    assert f"{port}:{port}" in proxy["ports"]


def test_compose_creates_the_bucket_the_proxy_uses() -> None:
    services = compose()["services"]
    bucket = load_settings(
        {"PROXY_STORAGE": services["proxy"]["environment"]["PROXY_STORAGE"]}
    ).storage.bucket
    script = " ".join(services["create-bucket"]["entrypoint"])
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert services["proxy"]["depends_on"]["create-bucket"]["condition"] == (
        "service_completed_successfully"
    )
    endpoint = services["proxy"]["environment"]["PROXY_S3_ENDPOINT_URL"]
    assert endpoint.split("//")[1].split(":")[0] in services


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2 and all("slim" in s for s in stages)
    final = text.split("\nFROM ", 2)[2]
    assert re.search(r"^USER 10001", final, re.MULTILINE), "final stage must not run as root"
    assert "gcc" not in final and "build-essential" not in final
    assert 'CMD ["serve"]' in final and 'ENTRYPOINT ["registry-proxy"]' in final
    assert "HEALTHCHECK" in final and '"healthcheck"' in final
    for variable in re.findall(r"\b(PROXY_[A-Z_]+)=", final):
        assert variable in ENV_VARS


def test_healthcheck_command_fails_without_a_server(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "proxy", "healthcheck"],
        env={"PROXY_LISTEN": "127.0.0.1:9", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "127.0.0.1:9/healthz" in result.stderr
