"""A tag moved upstream while the account has no pulls left: builds keep the image they had.

Real distribution (token auth) behind a Docker-Hub-like quota (tests/support/quota_gate.py),
skopeo as the client. The revalidation HEAD is free and shows the new digest; the GET of the new
manifest (a counted pull) is refused with 429. The proxy serves the previous digest, whose
manifests and blobs it holds, with a Warning; when the quota comes back the tag moves on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.distribution import Distribution
from support.oci_image import PushedImage, Skopeo, build_oci_layout, push_image, verify_dir_copy
from support.proxy_process import ProxyProcess
from support.quota_gate import QuotaGate

from .conftest import HUB_PASSWORD, HUB_USER, ProxyFactory

pytestmark = pytest.mark.e2e

REPOSITORY = "library/moving"


def head_tag(proxy: ProxyProcess, tag: str) -> tuple[int, dict[str, str]]:
    return proxy.head(f"/v2/{REPOSITORY}/manifests/{tag}")


def push(skopeo: Skopeo, upstream: Distribution, tmp_path: Path, seed: int) -> PushedImage:
    layout = build_oci_layout(tmp_path / f"layout-{seed}", tags=("latest",), seed=seed)
    return push_image(
        skopeo, layout, upstream.host, REPOSITORY, "x", username=HUB_USER, password=HUB_PASSWORD
    )


def test_moved_tag_without_quota_serves_the_cached_image(
    proxy_factory: ProxyFactory, upstream: Distribution, skopeo: Skopeo, tmp_path: Path
) -> None:
    old = push(skopeo, upstream, tmp_path, seed=21)
    with QuotaGate(upstream.url, retry_after=1) as gate:
        # TTL 0: every request revalidates, so no test has to wait for a TTL to pass.
        proxy = proxy_factory(upstream_url=gate.url, extra_env={"PROXY_TAG_TTL": "0"})
        reference = f"{proxy.host}/{REPOSITORY}:x"
        skopeo.pull_to_dir(reference, tmp_path / "first", all_images=True, timeout=120)
        verify_dir_copy(tmp_path / "first", old)

        new = push(skopeo, upstream, tmp_path, seed=22)  # the tag moves upstream
        gate.remaining = 0  # ... while the account has no pulls left
        gate.reset_counts()
        skopeo.pull_to_dir(reference, tmp_path / "stale", all_images=True, timeout=120)
        verify_dir_copy(tmp_path / "stale", old)  # the build got the image it had, whole
        assert gate.count("HEAD", "manifest", 200) >= 1  # it saw the new digest
        assert gate.count("GET", "manifest", 200) == 0  # and spent no pull
        status, headers = head_tag(proxy, "x")
        assert status == 200
        assert headers["docker-content-digest"] == old.index_digest
        assert "upstream rate limit reached" in headers["warning"]

        # The quota is back: once the back-off (Retry-After: 1) ends the tag moves on.
        gate.remaining = 100
        deadline = time.monotonic() + 30
        while head_tag(proxy, "x")[1].get("docker-content-digest") != new.index_digest:
            assert time.monotonic() < deadline, "the tag never moved to the new digest"
            time.sleep(0.2)
        skopeo.pull_to_dir(reference, tmp_path / "new", all_images=True, timeout=120)
        verify_dir_copy(tmp_path / "new", new)
