"""A cold skopeo pull with prefetch and pieces on, against real distribution.

The image's two layers (9 MiB and 3 MiB) are over the 2 MiB threshold set here, so each comes in
four Range requests, sent while skopeo is still reading the manifest. Counted from distribution's
access log: every blob's bytes are sent exactly once in all (pieces do not overlap, prefetch and
skopeo share one download), and no manifest is fetched beyond what skopeo asked for.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from support.distribution import BLOB_PATH, MANIFEST_PATH, Distribution
from support.oci_image import (
    AMD64,
    PushedImage,
    Skopeo,
    build_oci_layout,
    push_image,
    verify_dir_copy,
)

from e2e.conftest import HUB_PASSWORD, HUB_USER, ProxyFactory

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_binaries")]

MiB = 1024 * 1024
PIECES = 4


@pytest.fixture(scope="module")
def big_image(
    upstream_session: Distribution, skopeo: Skopeo, tmp_path_factory: pytest.TempPathFactory
) -> PushedImage:
    layout = build_oci_layout(
        tmp_path_factory.mktemp("pieces-layout"),
        seed=21,
        base_layer_size=9 * MiB,
        platform_layer_sizes=(3 * MiB,),
        platforms=(AMD64,),
    )
    return push_image(
        skopeo,
        layout,
        upstream_session.host,
        "library/pieces",
        "big",
        username=HUB_USER,
        password=HUB_PASSWORD,
    )


def test_cold_pull_with_pieces_sends_every_byte_once(
    proxy_factory: ProxyFactory,
    upstream: Distribution,
    skopeo: Skopeo,
    big_image: PushedImage,
    tmp_path: Path,
) -> None:
    proxy = proxy_factory(
        extra_env={"PROXY_FETCH_PIECE_THRESHOLD": "2MiB", "PROXY_FETCH_PIECES": str(PIECES)}
    )
    out = tmp_path / "out"
    mark = upstream.mark()
    skopeo.pull_to_dir(f"{proxy.host}/library/pieces:big", out, timeout=120)
    verify_dir_copy(out, big_image)

    upstream.sync()
    sent: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for entry in upstream.entries("GET", BLOB_PATH, since=mark):
        sent[entry.path.rsplit("/", 1)[1]].append((entry.status, entry.size))
    sizes = {f"sha256:{p.name}": p.stat().st_size for p in out.iterdir() if len(p.name) == 64}
    assert set(sent) == set(sizes)
    for digest, size in sizes.items():
        answers = sent[digest]
        assert sum(bytes_sent for _, bytes_sent in answers) == size, (digest, answers)
        if size > 2 * MiB:
            assert [status for status, _ in answers] == [206] * PIECES, (digest, answers)
        else:
            assert len(answers) == 1, (digest, answers)
    # The index and the platform manifest skopeo asked for: nothing more.
    assert upstream.count("GET", MANIFEST_PATH, since=mark, status=200) == 2
