"""skopeo pulls through the proxy from a token-authenticated distribution upstream.

Each test gets a fresh proxy with an empty cache.  Upstream requests are counted from
distribution's access log between marks (see support.distribution).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution
from support.oci_image import PushedImage, Skopeo, verify_dir_copy
from support.proxy_process import ProxyProcess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

IMAGE_TAGS = ("oci", "v2s2")  # OCI index / Docker manifest list, see conftest.golang_images
PULL_TIMEOUT = 120.0
CONCURRENT_PULLS = 8


@pytest.mark.parametrize("name", ["library/golang", "golang"])
@pytest.mark.parametrize("tag", IMAGE_TAGS)
def test_cold_pull_matches_upstream(
    proxy: ProxyProcess,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
    tag: str,
    name: str,
) -> None:
    """Index and per-platform manifest digests equal the upstream's; blobs hash to their names."""
    image = golang_images[tag]
    out = tmp_path / "out"
    skopeo.pull_to_dir(f"{proxy.host}/{name}:{tag}", out, timeout=PULL_TIMEOUT)
    verify_dir_copy(out, image)


@pytest.mark.parametrize("tag", IMAGE_TAGS)
def test_warm_pull_makes_no_upstream_gets(
    proxy: ProxyProcess,
    upstream: Distribution,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
    tag: str,
) -> None:
    image = golang_images[tag]
    reference = f"{proxy.host}/library/golang:{tag}"
    skopeo.pull_to_dir(reference, tmp_path / "first", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "first", image)

    mark = upstream.mark()
    skopeo.pull_to_dir(reference, tmp_path / "second", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "second", image)
    upstream.sync()

    blob_gets = upstream.entries("GET", BLOB_PATH, since=mark)
    manifest_gets = upstream.entries("GET", MANIFEST_PATH, since=mark)
    assert blob_gets == [], f"warm pull fetched blobs upstream: {[e.raw for e in blob_gets]}"
    assert manifest_gets == [], (
        f"warm pull fetched manifests upstream: {[e.raw for e in manifest_gets]}"
    )


@pytest.mark.parametrize("tag", IMAGE_TAGS)
def test_concurrent_cold_pulls_fetch_each_blob_once(
    proxy: ProxyProcess,
    upstream: Distribution,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
    tag: str,
) -> None:
    image = golang_images[tag]
    reference = f"{proxy.host}/library/golang:{tag}"
    outs = [tmp_path / f"out-{i}" for i in range(CONCURRENT_PULLS)]
    mark = upstream.mark()

    results = skopeo.run_many(
        [skopeo.copy_args_to_dir(reference, out) for out in outs], timeout=PULL_TIMEOUT
    )

    failures = [
        f"pull {i} exited {r.returncode}: {r.stdout.decode(errors='replace')[-2000:]}"
        for i, r in enumerate(results)
        if r.returncode != 0
    ]
    assert not failures, "\n".join(failures)
    for out in outs:
        verify_dir_copy(out, image)
    upstream.sync()
    blob_gets = upstream.blob_gets(since=mark)
    expected = set(image.blob_digests)
    repeated = {digest: n for digest, n in blob_gets.items() if n != 1}
    missing = sorted(expected - set(blob_gets))
    unexpected = sorted(set(blob_gets) - expected)
    assert not (repeated or missing or unexpected), (
        f"each of the {len(expected)} blobs should be fetched upstream exactly once; "
        f"fetched more than once: {repeated}; never fetched: {missing}; not in the image: "
        f"{unexpected}"
    )
