"""proxy/registry/probe.py: the probe image's bytes are constant, and what they say agrees (digests,
sizes, the layer's one file). Served through the app: tests/http/test_probe.py.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile

from support.oci_image import sha256_digest

from proxy.registry import probe

# The index every instance of every version serves: change the bytes and fleets that run two
# versions during a deploy would disagree on the digest a tag names.
INDEX_DIGEST = "sha256:1ceecbfb3539e415872a1fdc47b6e2802c5c50fc336098d8b2a243713a4f3d2c"


def test_probe_bytes_are_constant_and_consistent() -> None:
    assert probe.INDEX.digest == INDEX_DIGEST == sha256_digest(probe.INDEX.data)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(probe.LAYER))) as tar:
        [member] = tar.getmembers()
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert (member.name, extracted.read()) == ("registry-proxy-probe", probe.LAYER_TEXT)
    index = json.loads(probe.INDEX.data)
    platforms = {
        (m["platform"]["architecture"], m["platform"].get("variant")) for m in index["manifests"]
    }
    assert platforms == set(probe.PLATFORMS)
    for entry in index["manifests"]:
        manifest = probe.manifest(None, entry["digest"])
        assert manifest is not None and sha256_digest(manifest.data) == entry["digest"]
        document = json.loads(manifest.data)
        for descriptor in (document["config"], *document["layers"]):
            blob = probe.blob(descriptor["digest"])
            assert blob is not None and sha256_digest(blob.data) == descriptor["digest"]
            assert len(blob.data) == descriptor["size"]
        config = probe.blob(document["config"]["digest"])
        assert config is not None
        diff_ids = json.loads(config.data)["rootfs"]["diff_ids"]
        assert diff_ids == [sha256_digest(gzip.decompress(probe.LAYER))]
