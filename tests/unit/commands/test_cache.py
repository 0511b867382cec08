"""``registry-proxy cache ls|du|gc|verify`` on a directory cache filled through the proxy.

S3 (two instances, expiry, ``gc --dry-run``) is in tests/http/test_expiry_s3.py.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.fakehub import FakeHub, ImageInfo, IndexInfo
from support.proxy_app import Client, ProxyFactory, cache_command, downloads_settled
from support.settings import settings_with

from proxy.cache.keys import blob_key, manifest_key
from proxy.commands.cache import Output, verify
from proxy.commands.cli import main
from proxy.config import Settings
from proxy.http.routes import SERVICES
from proxy.registry.reference import Digest
from proxy.storage import StorageError
from proxy.storage.failsafe import FailSafeStorage
from proxy.storage.filesystem import FilesystemStorage

DAY = 86400.0
ACCEPT = {
    "Accept": "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
}


async def pull(client: Client, repo: str, reference: str) -> None:
    response = await client.get(f"/v2/{repo}/manifests/{reference}", headers=ACCEPT)
    assert response.status == 200
    document = json.loads(await response.read())
    for child in document.get("manifests", []):
        await pull(client, repo, child["digest"])
    for described in [document.get("config"), *document.get("layers", [])]:
        if described:
            blob = await client.get(f"/v2/{repo}/blobs/{described['digest']}")
            assert blob.status == 200
            await blob.read()
    await downloads_settled(client)  # a pull is over once its blobs are stored


@pytest.fixture
async def filled(
    fakehub: FakeHub, make_proxy: ProxyFactory
) -> tuple[Client, Settings, ImageInfo, IndexInfo]:
    single = fakehub.add_image("library/golang", "1.22", [b"layer one" * 1000, b"layer two"])
    multi = fakehub.add_multiarch_image("chainguard/static", "latest")
    client = await make_proxy(fakehub)
    await pull(client, "library/golang", "1.22")
    await pull(client, "chainguard/static", "latest")
    services = client.app[SERVICES]
    await services.janitor.last_use.flush()
    return client, services.settings, single, multi


async def test_ls_lists_tags_with_digests_sizes_and_last_use(
    filled: tuple[Client, Settings, ImageInfo, IndexInfo],
) -> None:
    _, settings, single, multi = filled
    status, text = await cache_command(settings, "ls", "--json")
    assert status == 0
    rows = {row["repository"]: row for row in json.loads(text)}
    golang = rows["library/golang"]
    assert (golang["upstream"], golang["tag"], golang["digest"]) == (
        "docker.io",
        "1.22",
        single.digest,
    )
    assert golang["bytes"] == len(single.manifest) + single.blob_bytes
    assert golang["complete"] is True
    assert time.time() - golang["last_used"] < 600
    static = rows["chainguard/static"]
    assert static["digest"] == multi.digest
    expected = len(multi.manifest) + sum(len(i.manifest) + i.blob_bytes for i in multi.images)
    assert static["bytes"] == expected

    status, text = await cache_command(settings, "ls")
    assert status == 0
    assert "docker.io/library/golang" in text and "1.22" in text and "just now" in text


async def test_du_totals_per_kind_and_repository(
    filled: tuple[Client, Settings, ImageInfo, IndexInfo],
) -> None:
    _, settings, single, _ = filled
    status, text = await cache_command(settings, "du", "--json")
    assert status == 0
    usage = json.loads(text)
    assert usage["kinds"]["blob"]["entries"] == 3 + 2 * 2
    assert usage["kinds"]["manifest"]["entries"] == 1 + 3
    assert usage["kinds"]["tag"]["entries"] == 2
    assert usage["kinds"]["use-records"]["entries"] >= 1
    assert usage["bytes"] == sum(
        k["bytes"] for n, k in usage["kinds"].items() if n != "use-records"
    )
    assert (
        usage["repositories"]["docker.io/library/golang"]
        == len(single.manifest) + single.blob_bytes
    )
    assert usage["limit_bytes"] is None  # (the test proxy has no limit)
    status, text = await cache_command(settings, "du")
    assert status == 0 and "docker.io/chainguard/static" in text


async def test_gc_expires_what_was_not_used(
    filled: tuple[Client, Settings, ImageInfo, IndexInfo], fakehub: FakeHub
) -> None:
    client, settings, single, multi = filled
    later = time.time() + 20 * DAY
    # Twenty days on, golang is pulled again (through a proxy whose clock says so).
    services = client.app[SERVICES]
    services.janitor.last_use._clock = lambda: later
    services.manifests._tags.clear()
    services.manifests._manifests.clear()
    await pull(client, "library/golang", "1.22")
    await services.janitor.last_use.flush()

    expiring = settings_with(settings, expire_unused=30 * DAY)
    status, text = await cache_command(expiring, "gc", "--dry-run", clock=later + 15 * DAY)
    assert status == 0
    assert "would delete expired tag docker.io/chainguard/static:latest" in text
    assert f"would delete expired manifest {multi.digest}" in text
    assert "golang" not in text and single.digest not in text
    root = settings.storage.location.path
    assert root is not None
    assert (root / "data" / manifest_key(Digest.parse(multi.digest))).exists()  # dry: kept

    status, text = await cache_command(expiring, "gc", clock=later + 15 * DAY)
    assert status == 0
    assert "8 expired" in text  # the index, 2 platform manifests, 4 blobs, the tag
    assert not (root / "data" / manifest_key(Digest.parse(multi.digest))).exists()
    for digest in single.blob_digests:
        assert (root / "data" / blob_key(Digest.parse(digest))).exists()
    _, listing = await cache_command(expiring, "ls", "--json", clock=later + 15 * DAY)
    assert [row["repository"] for row in json.loads(listing)] == ["library/golang"]
    _, text = await cache_command(expiring, "gc", clock=later + 15 * DAY)
    assert "0 expired" in text and "1 use records merged" in text


async def test_verify_removes_a_corrupt_blob_and_a_corrupt_manifest(
    filled: tuple[Client, Settings, ImageInfo, IndexInfo], fakehub: FakeHub
) -> None:
    client, settings, single, _ = filled
    root = settings.storage.location.path
    assert root is not None
    blob = root / "data" / blob_key(Digest.parse(single.layer_digests[0]))
    manifest = root / "data" / manifest_key(Digest.parse(single.digest))
    blob.write_bytes(b"rotten" + blob.read_bytes()[6:])
    manifest.write_bytes(manifest.read_bytes().replace(b"schemaVersion", b"schemaversion"))

    status, text = await cache_command(settings, "verify")
    assert status == 1
    assert f"removed {blob_key(Digest.parse(single.layer_digests[0]))}: content hashes" in text
    assert f"removed {manifest_key(Digest.parse(single.digest))}: content hashes" in text
    assert "2 removed" in text
    assert not blob.exists() and not manifest.exists()
    status, text = await cache_command(settings, "verify")
    assert status == 0 and "0 removed" in text

    # The proxy fetches both again (good bytes) from the upstream once its memory lets go of
    # them (manifests and small blobs are kept in memory too, verified).
    client.app[SERVICES].manifests._manifests.clear()
    client.app[SERVICES].blobs._small.clear()
    await pull(client, "library/golang", "1.22")
    assert blob.exists()


def test_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROXY_STORAGE", str(tmp_path / "cache"))
    # main() configures logging for the process: keep it off this test's captured streams.
    monkeypatch.setattr("proxy.commands.cli.configure_logging", lambda *args: None)
    assert main(["cache", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["cache", "gc", "--dry-run", "--expire-unused", "30d"]) == 0
    assert "dry run: 0 expired" in capsys.readouterr().out
    assert main(["cache", "du"]) == 0
    assert "in the cache" in capsys.readouterr().out
    assert main(["cache", "verify", "--storage", str(tmp_path / "other")]) == 0
    assert main(["cache", "gc", "--expire-unused", "soon"]) == 2
    assert "PROXY_CACHE_EXPIRE_UNUSED" in capsys.readouterr().err


class ReadsFailFor(FilesystemStorage):
    """A directory whose reads of one key fail half-way (a bad sector, S3 resetting)."""

    failing_key = ""

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in super().read(key, start, end):
            if key == self.failing_key:
                raise StorageError(f"injected read failure for {key}")
            yield chunk


async def test_verify_never_removes_what_it_could_not_read(
    filled: tuple[Client, Settings, ImageInfo, IndexInfo],
) -> None:
    """An entry it could not read is reported, not judged (issue 21, mutation: verify deleting
    entries it could not read)."""
    _, settings, single, _ = filled
    assert settings.storage.location.path is not None
    backend = ReadsFailFor(settings.storage.location.path)
    key = blob_key(Digest.parse(single.layer_digests[0]))
    backend.failing_key = key
    storage = FailSafeStorage(backend, cooldown=0)
    await storage.open()
    out = io.StringIO()
    assert await verify(storage, Output(out, io.StringIO())) == 1
    assert f"unreadable {key}" in out.getvalue() and "0 removed, 1 unreadable" in out.getvalue()
    assert (backend.data_dir / key).exists()
