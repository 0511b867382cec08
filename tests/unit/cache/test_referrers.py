"""proxy/cache/referrers.py's own rules: the artifactType filter keeps the rest of the index, and a
next-page link never leaves the repository. Through the app: tests/http/test_referrers.py.
"""

from __future__ import annotations

import json

from support.fakehub import OCI_INDEX

from proxy.cache.referrers import _next_page, filter_index


def test_filter_keeps_the_rest_of_the_index() -> None:
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "annotations": {"a": "b"},
            "manifests": [
                {"digest": "sha256:1", "artifactType": "x"},
                {"digest": "sha256:2", "artifactType": "y"},
                "junk",
            ],
        }
    ).encode()
    filtered = json.loads(filter_index(index, "y"))
    assert filtered["annotations"] == {"a": "b"}
    assert filtered["manifests"] == [{"digest": "sha256:2", "artifactType": "y"}]


def test_next_page_links_stay_on_the_repository() -> None:
    subject = f"sha256:{'a' * 64}"
    assert _next_page(f'</v2/lib/x/referrers/{subject}?n=2&last=b>; rel="next"', "lib/x") == (
        f"/referrers/{subject}?n=2&last=b"
    )
    assert _next_page(f'<https://r.example/v2/lib/x/referrers/{subject}>; rel="next"', "lib/x")
    assert _next_page(f'</v2/other/referrers/{subject}>; rel="next"', "lib/x") is None
    assert _next_page('</v2/lib/x/manifests/latest>; rel="next"', "lib/x") is None
    assert _next_page(f'</v2/lib/x/referrers/{subject}>; rel="prev"', "lib/x") is None
    assert _next_page(None, "lib/x") is None
