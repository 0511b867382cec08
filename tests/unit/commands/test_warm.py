"""``registry-proxy warm``: fills the cache, and a second run fetches nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from support.fakehub import FakeHub
from support.settings import settings_with

from proxy.commands.warm import parse_image, read_image_list, warm
from proxy.config import Settings, StorageLocation
from proxy.registry.errors import RegistryError
from proxy.registry.policy import parse_repository_patterns
from proxy.registry.reference import Reference


def settings_for(hub: FakeHub, root: Path, **overrides: object) -> Settings:
    return settings_with(
        url=hub.url, location=StorageLocation(path=root), read_timeout=5.0, **overrides
    )


@pytest.mark.parametrize(
    ("image", "name", "reference"),
    [
        ("golang", "golang", "latest"),
        ("golang:1.22", "golang", "1.22"),
        ("ghcr.io/o/r:v1", "ghcr.io/o/r", "v1"),
        (f"alpine@sha256:{'a' * 64}", "alpine", f"sha256:{'a' * 64}"),
    ],
)
def test_parse_image(image: str, name: str, reference: str) -> None:
    assert parse_image(image) == (name, Reference.parse(reference))


def test_parse_image_rejects_bad_names() -> None:
    with pytest.raises(RegistryError):
        parse_image("Golang:1")


def test_image_list_file(tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("# base images\ngolang:1.22\n\n  alpine:3.20  # small\n")
    assert read_image_list(listing) == ["golang:1.22", "alpine:3.20"]


async def test_warm_twice_second_run_fetches_nothing(fakehub: FakeHub, tmp_path: Path) -> None:
    index = fakehub.add_multiarch_image("library/golang", "1.22")
    settings = settings_for(fakehub, tmp_path / "cache", tag_ttl=0)
    output = io.StringIO()
    assert await warm(settings, ["golang:1.22"], None, output) == 0
    blob_digests = {d for image in index.images for d in image.blob_digests}
    assert {r.path.rsplit("/", 1)[1] for r in fakehub.matching(server="cdn")} == blob_digests
    cached = list((tmp_path / "cache" / "data" / "blobs").rglob("*"))
    assert len([p for p in cached if p.is_file()]) == len(blob_digests)

    fakehub.reset_counts()
    remaining = fakehub.rate_remaining
    assert await warm(settings, ["golang:1.22"], None, output) == 0
    assert fakehub.rate_remaining == remaining  # no counted pull
    assert fakehub.count("GET", server=None) == fakehub.token_requests()  # only token GETs
    assert fakehub.count("HEAD", kind="manifest", status=200) == 1  # the tag, revalidated


async def test_warm_one_platform(fakehub: FakeHub, tmp_path: Path) -> None:
    index = fakehub.add_multiarch_image("library/golang", "1.22")
    settings = settings_for(fakehub, tmp_path / "cache")
    assert await warm(settings, ["golang:1.22"], ["linux/arm64/v8"], io.StringIO()) == 0
    arm = next(i for i in index.images if i.platform == "linux/arm64/v8")
    fetched = {r.path.rsplit("/", 1)[1] for r in fakehub.matching(server="cdn")}
    assert fetched == set(arm.blob_digests)


async def test_warm_reports_failures(fakehub: FakeHub, tmp_path: Path) -> None:
    settings = settings_for(fakehub, tmp_path / "cache")
    assert await warm(settings, ["golang:missing"], None, io.StringIO()) == 1


async def test_warm_obeys_the_rules(fakehub: FakeHub, tmp_path: Path) -> None:
    for repo in ("library/golang", "library/ubuntu", "bitnami/redis"):
        fakehub.add_image(repo, "1.0")
    settings = settings_for(
        fakehub,
        tmp_path / "cache",
        allow_repositories=parse_repository_patterns("library/*,myorg/*"),
        deny_repositories=parse_repository_patterns("library/ubuntu"),
    )
    output = io.StringIO()
    assert await warm(settings, ["ubuntu:1.0", "bitnami/redis:1.0"], None, output) == 2
    assert fakehub.count(server=None) == 0
    assert await warm(settings, ["golang:1.0"], None, output) == 0
