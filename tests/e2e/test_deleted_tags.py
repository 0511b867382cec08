"""A tag deleted upstream (distribution 2.8, the manifest deleted by digest), pulled with skopeo.

By default the proxy says so: 404 once the tag is revalidated. With PROXY_KEEP_DELETED_TAGS=true
it keeps serving the last digest it knew, with a Warning, and the whole image still pulls.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.distribution import Distribution
from support.oci_image import (
    PushedImage,
    Skopeo,
    SkopeoError,
    build_oci_layout,
    push_image,
    verify_dir_copy,
)
from support.oci_push import RegistryWriter
from support.proxy_process import ProxyProcess

from .conftest import HUB_PASSWORD, HUB_USER, ProxyFactory

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

REPOSITORY = "library/removed"


def head_tag(proxy: ProxyProcess, tag: str) -> tuple[int, dict[str, str]]:
    return proxy.head(f"/v2/{REPOSITORY}/manifests/{tag}")


def push_and_pull(
    proxy: ProxyProcess, upstream: Distribution, skopeo: Skopeo, tmp_path: Path, tag: str
) -> PushedImage:
    layout = build_oci_layout(
        tmp_path / "layout",
        seed=31,
        base_layer_size=64 * 1024,
        platform_layer_sizes=(16 * 1024,),
    )
    image = push_image(
        skopeo, layout, upstream.host, REPOSITORY, tag, username=HUB_USER, password=HUB_PASSWORD
    )
    skopeo.pull_to_dir(f"{proxy.host}/{REPOSITORY}:{tag}", tmp_path / "first", timeout=120)
    verify_dir_copy(tmp_path / "first", image)
    RegistryWriter(upstream).delete_manifest(REPOSITORY, image.index_digest)
    assert upstream.request("HEAD", f"/v2/{REPOSITORY}/manifests/{tag}")[0] in (401, 404)
    return image


def test_deleted_tag_answers_404_by_default(
    proxy_factory: ProxyFactory, upstream: Distribution, skopeo: Skopeo, tmp_path: Path
) -> None:
    # TTL 0: revalidated on every request, so the deletion shows without waiting for a TTL.
    proxy = proxy_factory(extra_env={"PROXY_TAG_TTL": "0"})
    push_and_pull(proxy, upstream, skopeo, tmp_path, "gone")
    assert head_tag(proxy, "gone")[0] == 404
    with pytest.raises(SkopeoError, match="manifest unknown"):
        skopeo.pull_to_dir(f"{proxy.host}/{REPOSITORY}:gone", tmp_path / "after", timeout=120)


def test_kept_deleted_tag_still_pulls_with_a_warning(
    proxy_factory: ProxyFactory, upstream: Distribution, skopeo: Skopeo, tmp_path: Path
) -> None:
    proxy = proxy_factory(extra_env={"PROXY_TAG_TTL": "0", "PROXY_KEEP_DELETED_TAGS": "true"})
    image = push_and_pull(proxy, upstream, skopeo, tmp_path, "kept")
    status, headers = head_tag(proxy, "kept")
    assert status == 200
    assert headers["docker-content-digest"] == image.index_digest
    assert headers["warning"] == (
        '110 registry-proxy "served from cache: upstream no longer has this tag"'
    )
    skopeo.pull_to_dir(f"{proxy.host}/{REPOSITORY}:kept", tmp_path / "after", timeout=120)
    verify_dir_copy(tmp_path / "after", image)
