"""proxy/ops/status_page.py's figures for people: counts, shares, sizes and ages as the page shows
them. The page itself, in a real browser: tests/http/test_status_page.py.
"""

from __future__ import annotations

from proxy.config_values import human_bytes
from proxy.ops.status_page import ago, human_count, percent


def test_figures_for_people() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1234) == "1.21 KiB"
    assert human_bytes(1_200_000_000) == "1.12 GiB"
    assert human_bytes(None) == "\u2013"
    assert human_count(1234567) == "1\u202f234\u202f567"
    assert percent(0.538) == "53.8 %"
    now = 10_000.0
    assert ago(now - 2, now) == "just now"
    assert ago(now - 42, now) == "42 s ago"
    assert ago(now - 180, now) == "3 min ago"
    assert ago(now - 7200, now) == "2 h ago"
    assert ago(now - 3 * 86400, now) == "3 days ago"
    assert ago(None, now) == "never"
