"""Expiry by last use on S3 (moto), with two proxy instances on one bucket.

Hits through instance B keep an image alive that instance A's sweep would otherwise delete;
images nobody used go; ``cache gc --dry-run`` lists without deleting; two instances sweeping at
once do no harm. Clocks are fake (days pass in no time); only the objects' write times are
moto's own, and those are "now" at the start.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

from support.fakehub import FakeHub, ImageInfo
from support.moto import MotoServer
from support.proxy_app import Client, ProxyFactory, downloads_settled
from support.settings import settings_with

from proxy.cache.keys import blob_key, manifest_key, tag_key
from proxy.commands.cache import Output, run
from proxy.commands.cli import build_parser
from proxy.config import Settings, StorageLocation
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest

DAY = 86400.0
PREFIX = "cache"
ACCEPT = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}


async def pull(client: Client, image: ImageInfo) -> None:
    response = await client.get(f"/v2/{image.repo}/manifests/latest", headers=ACCEPT)
    assert response.status == 200
    for digest in image.blob_digests:
        blob = await client.get(f"/v2/{image.repo}/blobs/{digest}")
        assert blob.status == 200
        await blob.read()
    await downloads_settled(client)  # a pull is over once its blobs are stored


def keys_of(image: ImageInfo) -> list[str]:
    return [
        tag_key("docker.io", image.repo, "latest"),
        manifest_key(Digest.parse(image.digest)),
        *(blob_key(Digest.parse(d)) for d in image.blob_digests),
    ]


def stored(moto: MotoServer, bucket: str) -> set[str]:
    client: Any = moto.client()
    found: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        found.update(item["Key"][len(PREFIX) + 1 :] for item in page.get("Contents", []))
    return found


def at(client: Client, when: float) -> None:
    """Set the instance's clock for what it records and sweeps."""
    janitor = client.app[SERVICES].janitor
    janitor.last_use._clock = lambda: when
    janitor.housekeeper.clock = lambda: when


async def test_hits_through_one_instance_keep_an_image_another_would_expire(
    fakehub: FakeHub, make_proxy: ProxyFactory, moto_endpoint: MotoServer, tmp_path: Path
) -> None:
    bucket = moto_endpoint.create_bucket()
    kept = fakehub.add_image("library/kept", "latest", [b"kept layer" * 100])
    unused = fakehub.add_image("library/unused", "latest", [b"unused layer" * 100])

    def instance(name: str) -> dict[str, Any]:
        return {
            "location": StorageLocation(bucket=bucket, prefix=PREFIX),
            "s3_endpoint_url": moto_endpoint.endpoint_url,
            "spool_dir": tmp_path / f"spool-{name}",
            "expire_unused": 30 * DAY,
        }

    a = await make_proxy(fakehub, **instance("a"))
    b = await make_proxy(fakehub, **instance("b"))
    start = time.time()
    at(a, start)
    at(b, start)
    await pull(a, kept)
    await pull(a, unused)
    await a.app[SERVICES].janitor.last_use.flush()
    assert set(keys_of(kept) + keys_of(unused)) <= stored(moto_endpoint, bucket)

    # Twenty days on, builds pull "kept" through instance B only.
    at(b, start + 20 * DAY)
    await pull(b, kept)
    await b.app[SERVICES].janitor.last_use.flush()  # (B does this every minute)

    # Thirty-five days on: unused for 35 days goes, used 15 days ago stays.
    sweep_time = start + 35 * DAY
    settings: Settings = settings_with(a.app[SERVICES].settings, limit=None)
    args = build_parser().parse_args(["cache", "gc", "--dry-run"])
    out = io.StringIO()
    status = await run(settings, args, output=Output(out, io.StringIO()), clock=lambda: sweep_time)
    assert status == 0
    listed = out.getvalue()
    assert "would delete expired tag docker.io/library/unused:latest" in listed
    for digest in (unused.digest, *unused.blob_digests):
        assert digest in listed
    assert "library/kept" not in listed and kept.digest not in listed
    assert set(keys_of(unused)) <= stored(moto_endpoint, bucket)  # a dry run deletes nothing

    at(a, sweep_time)
    at(b, sweep_time)
    # Both instances sweep at once: no harm, same outcome.
    reports = await asyncio.gather(a.app[SERVICES].janitor.sweep(), b.app[SERVICES].janitor.sweep())
    assert all(len(report.expired) == 4 for report in reports)
    left = stored(moto_endpoint, bucket)
    assert not set(keys_of(unused)) & left
    assert set(keys_of(kept)) <= left
    # The use records were merged; "kept"'s last use survives the merge.
    records = [key for key in left if key.startswith("access/")]
    assert 1 <= len(records) <= 2
    uses = (await a.app[SERVICES].janitor.last_use.records.read()).uses
    assert uses[manifest_key(Digest.parse(kept.digest))] == start + 20 * DAY
    assert manifest_key(Digest.parse(unused.digest)) not in uses

    # The expired image is fetched again on demand (its tag record is gone too), once the
    # instances' memory lets go of it (manifests and small blobs such as configs are kept there).
    for client in (a, b):
        client.app[SERVICES].manifests._tags.clear()
        client.app[SERVICES].manifests._manifests.clear()
        client.app[SERVICES].blobs._small.clear()
    fakehub.reset_counts()
    await pull(a, unused)
    assert fakehub.manifest_gets("library/unused") == 1
    await pull(b, kept)
    assert fakehub.cdn_gets() == len(unused.blob_digests)  # kept's blobs were never refetched
