"""imageFromAsset builds the image from the repository's Dockerfile at deploy time.

Synthesis only stages the build context, so it needs no Docker daemon.  The staged context must
leave out virtualenvs, git data and caches: the tests stage a fake checkout full of such clutter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_proxy_infra import service as service_module

from .scenarios import REQUIRED_CONTEXT, Synthesized, synthesize

CLUTTER = [
    ".git/objects/ab/cdef",
    ".venv/lib/python3.11/site-packages/big.py",
    ".mypy_cache/3.11/cache.json",
    "cache/blobs/sha256/aa",
    "proxy/__pycache__/app.cpython-311.pyc",
    "infra/cdk.out/manifest.json",
    "infra/.venv/bin/python",
    "docs/node_modules/x/index.js",
    "registry_proxy.egg-info/PKG-INFO",
]
KEPT = ["Dockerfile", "pyproject.toml", "proxy/__init__.py", "proxy/http/app.py"]


@pytest.fixture(scope="module")
def fake_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkout")
    for name in CLUTTER + KEPT:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("FROM scratch\n" if name == "Dockerfile" else name)
    return root


@pytest.fixture(scope="module")
def asset_synth(
    tmp_path_factory: pytest.TempPathFactory, fake_checkout: Path
) -> Iterator[Synthesized]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service_module, "REPOSITORY_ROOT", fake_checkout)
        context = {**REQUIRED_CONTEXT, "imageTag": None, "imageFromAsset": True}
        yield synthesize("asset", context, tmp_path_factory.mktemp("cdk-asset"))


def staged_directory(synth: Synthesized) -> Path:
    assets = json.loads((synth.outdir / "RegistryProxy.assets.json").read_text())
    (image_asset,) = assets["dockerImages"].values()
    assert image_asset["source"]["dockerFile"] == "Dockerfile"
    assert image_asset["source"]["platform"] == "linux/amd64"
    return synth.outdir / str(image_asset["source"]["directory"])


def test_container_image_is_the_built_asset(asset_synth: Synthesized) -> None:
    definitions = asset_synth.only("AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    assert "container-assets" in json.dumps(definitions[0]["Image"])


def test_build_context_leaves_out_local_clutter(asset_synth: Synthesized) -> None:
    staged = staged_directory(asset_synth)
    present = sorted(str(path.relative_to(staged)) for path in staged.rglob("*") if path.is_file())
    assert present == sorted(KEPT)


def test_asset_scenario_passes_cdk_nag(asset_synth: Synthesized) -> None:
    assert [row for row in asset_synth.nag_rows() if row["Compliance"] == "Non-Compliant"] == []
