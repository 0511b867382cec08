"""The S3 cache end to end: real proxy processes, a moto S3 server, distribution and skopeo.

- A new instance with an empty local disk on the same bucket is warm at once.
- Two instances pulling the same cold image together both succeed, and every object verifies.
- PROXY_BLOB_REDIRECT sends cached blobs straight from S3.
- With S3 gone, pulls still work (streamed from upstream) and readiness says not ready.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution
from support.moto import CREDENTIALS, MotoServer, unique_bucket_name
from support.oci_image import PushedImage, Skopeo, verify_dir_copy
from support.proxy_process import ProxyProcess

from e2e.conftest import ProxyFactory

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

PULL_TIMEOUT = 120.0
TAG = "oci"


def s3_env(moto: MotoServer, bucket: str, **extra: str) -> dict[str, str]:
    return {
        **CREDENTIALS,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PROXY_STORAGE": f"s3://{bucket}/cache",
        "PROXY_S3_ENDPOINT_URL": moto.endpoint_url,
        **extra,
    }


def s3_proxy(factory: ProxyFactory, moto: MotoServer, bucket: str, **extra: str) -> ProxyProcess:
    return factory(extra_env=s3_env(moto, bucket, **extra))


def scan_bucket(moto: MotoServer, bucket: str) -> tuple[int, list[str]]:
    """(objects checked, keys whose bytes do not hash to the digest in their name)."""
    client: Any = moto.client()
    bad: list[str] = []
    checked = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            key: str = entry["Key"]
            if "/blobs/sha256/" not in key and "/manifests/sha256/" not in key:
                continue
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            checked += 1
            if hashlib.sha256(body).hexdigest() != key.rsplit("/", 1)[1]:
                bad.append(key)
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    bad += [f"unfinished upload {u['Key']}" for u in uploads]
    return checked, bad


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), json.loads(error.read())


def test_new_instance_on_the_same_bucket_is_warm(
    proxy_factory: ProxyFactory,
    moto_endpoint: MotoServer,
    upstream: Distribution,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
) -> None:
    bucket = moto_endpoint.create_bucket(unique_bucket_name("warm"))
    image = golang_images[TAG]
    first = s3_proxy(proxy_factory, moto_endpoint, bucket)
    skopeo.pull_to_dir(f"{first.host}/library/golang:{TAG}", tmp_path / "a", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "a", image)
    first.stop()

    mark = upstream.mark()
    second = s3_proxy(proxy_factory, moto_endpoint, bucket)  # its own, empty local disk
    skopeo.pull_to_dir(f"{second.host}/golang:{TAG}", tmp_path / "b", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "b", image)
    upstream.sync()
    assert upstream.entries("GET", BLOB_PATH, since=mark) == []
    assert upstream.entries("GET", MANIFEST_PATH, since=mark) == []
    checked, bad = scan_bucket(moto_endpoint, bucket)
    assert checked >= len(image.blob_digests) and bad == []


def test_two_instances_pull_the_same_cold_image(
    proxy_factory: ProxyFactory,
    moto_endpoint: MotoServer,
    upstream: Distribution,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
) -> None:
    bucket = moto_endpoint.create_bucket(unique_bucket_name("race"))
    image = golang_images[TAG]
    proxies = [s3_proxy(proxy_factory, moto_endpoint, bucket) for _ in range(2)]
    outs = [tmp_path / f"out-{i}" for i in range(6)]
    mark = upstream.mark()
    results = skopeo.run_many(
        [
            skopeo.copy_args_to_dir(f"{proxies[i % 2].host}/library/golang:{TAG}", out)
            for i, out in enumerate(outs)
        ],
        timeout=PULL_TIMEOUT,
    )
    assert [r.returncode for r in results] == [0] * len(outs), [
        r.stdout.decode(errors="replace")[-1500:] for r in results if r.returncode
    ]
    for out in outs:
        verify_dir_copy(out, image)
    upstream.sync()
    # Each instance de-duplicates its own clients: at most one upstream fetch per blob each.
    assert all(n <= 2 for n in upstream.blob_gets(since=mark).values())
    checked, bad = scan_bucket(moto_endpoint, bucket)
    assert checked >= len(image.blob_digests)
    assert bad == []


def test_blob_redirect_serves_cached_blobs_from_s3(
    proxy_factory: ProxyFactory,
    moto_endpoint: MotoServer,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
) -> None:
    bucket = moto_endpoint.create_bucket(unique_bucket_name("redirect"))
    image = golang_images[TAG]
    proxy = s3_proxy(proxy_factory, moto_endpoint, bucket, PROXY_BLOB_REDIRECT="true")
    reference = f"{proxy.host}/library/golang:{TAG}"
    skopeo.pull_to_dir(reference, tmp_path / "cold", timeout=PULL_TIMEOUT)
    skopeo.pull_to_dir(reference, tmp_path / "warm", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "warm", image)
    redirected = [
        r
        for r in proxy.json_logs()
        if r.get("event") == "request" and "/blobs/" in str(r.get("path")) and r["status"] == 307
    ]
    assert len(redirected) >= len(set(image.blob_digests))


def test_s3_down_still_serves_and_reports_not_ready(
    proxy_factory: ProxyFactory,
    skopeo: Skopeo,
    golang_images: dict[str, PushedImage],
    tmp_path: Path,
) -> None:
    with MotoServer(workdir=tmp_path / "moto") as moto:
        bucket = moto.create_bucket(unique_bucket_name("down"))
        proxy = s3_proxy(
            proxy_factory, moto, bucket, PROXY_TAG_TTL="0", PROXY_UPSTREAM_READ_TIMEOUT="10"
        )
        assert get_json(f"{proxy.url}/readyz")[0] == 200
    # moto is gone: the pull streams from the upstream without caching.
    skopeo.pull_to_dir(f"{proxy.host}/library/golang:{TAG}", tmp_path / "out", timeout=PULL_TIMEOUT)
    verify_dir_copy(tmp_path / "out", golang_images[TAG])
    status, body = get_json(f"{proxy.url}/readyz")
    assert status == 503 and "storage" in body
    assert any(r.get("event") == "storage.error" for r in proxy.json_logs())
