"""proxy/cache/negative.py: upstream 404s remembered for the negative TTL, never with a TTL of 0.
Through the app (one upstream request for many clients, failures not remembered):
tests/http/test_negative_cache.py.
"""

from __future__ import annotations

from proxy.cache.negative import NegativeCache


def test_negative_cache_entries_expire() -> None:
    now = [0.0]
    cache = NegativeCache(30, clock=lambda: now[0])
    cache.remember("a")
    assert "a" in cache and "b" not in cache
    now[0] = 29.9
    assert "a" in cache
    now[0] = 30.0
    assert "a" not in cache
    disabled = NegativeCache(0, clock=lambda: now[0])
    disabled.remember("a")
    assert "a" not in disabled
