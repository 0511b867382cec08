"""Benchmarks (``make bench``), kept out of the test suite.

Run from the ``tests`` directory: ``cd tests && python -m bench.run``.  There ``bench`` and the
test helpers (``support``) are top-level packages, exactly as pytest sees them, so the harness
uses the same process wrappers, fake servers and image builders as the end-to-end tests.
"""
