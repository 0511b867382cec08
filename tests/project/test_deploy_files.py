"""The Dockerfile and docker-compose.yml agree with what the proxy really accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from support.paths import REPO

from proxy.config import ENV_VARS, load_settings

ROOT = REPO


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
    assert settings.storage.location.is_s3
    assert settings.storage.s3_endpoint_url == "http://minio:9000"
    port = settings.listen.port
    assert f"{port}:{port}" in proxy["ports"]


def test_compose_creates_the_bucket_the_proxy_uses() -> None:
    services = compose()["services"]
    bucket = load_settings(
        {"PROXY_STORAGE": services["proxy"]["environment"]["PROXY_STORAGE"]}
    ).storage.location.bucket
    script = " ".join(services["create-bucket"]["entrypoint"])
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert services["proxy"]["depends_on"]["create-bucket"]["condition"] == (
        "service_completed_successfully"
    )
    endpoint = services["proxy"]["environment"]["PROXY_S3_ENDPOINT_URL"]
    assert endpoint.split("//")[1].split(":")[0] in services


def dockerfile_final_stage() -> str:
    return (ROOT / "Dockerfile").read_text().split("\nFROM ", 2)[2]


def dockerfile_env(text: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs of the ENV instructions (the continuation-line form used here)."""
    return dict(re.findall(r"\b([A-Z_]+)=(\S+?)(?:\s*\\)?$", text, re.MULTILINE))


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # The base is a build argument (CI builds on a base it makes), python:3.11-slim by default.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    final = dockerfile_final_stage()
    assert re.search(r"^USER 10001", final, re.MULTILINE), "final stage must not run as root"
    assert "gcc" not in final and "build-essential" not in final
    assert 'CMD ["serve"]' in final and 'ENTRYPOINT ["registry-proxy"]' in final
    assert "HEALTHCHECK" in final and '"healthcheck"' in final
    for variable in re.findall(r"\b(PROXY_[A-Z_]+)=", final):
        assert variable in ENV_VARS


def test_dockerfile_declares_the_writable_directories_as_volumes_owned_by_the_user() -> None:
    """A volume mounted at a declared VOLUME takes the image's ownership of that directory;
    anywhere else (Fargate bind mounts) it would belong to root, mode 0755."""
    final = dockerfile_final_stage()
    env = dockerfile_env(final)
    spool, cache = env["PROXY_SPOOL_DIR"], env["PROXY_STORAGE"]
    [volumes] = re.findall(r"^VOLUME (\[.*\])$", final, re.MULTILINE)
    assert sorted(json.loads(volumes)) == sorted([spool, cache])
    created = re.search(r"install -d -o 10001 -g 10001 -m 0700 (.+)$", final, re.MULTILINE)
    assert created is not None
    assert sorted(created.group(1).split()) == sorted([spool, cache])
    # the directories are created before the USER switch, by root, for the runtime user
    assert final.index("install -d") < final.index("USER 10001")


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


def test_compose_runs_the_proxy_read_only_with_its_spool_on_a_volume() -> None:
    proxy = compose()["services"]["proxy"]
    assert proxy["read_only"] is True
    spool = dockerfile_env(dockerfile_final_stage())["PROXY_SPOOL_DIR"]
    mounts = {entry.split(":")[1]: entry.split(":")[0] for entry in proxy["volumes"]}
    assert mounts[spool] in compose()["volumes"]
