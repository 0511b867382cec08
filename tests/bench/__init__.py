"""Benchmarks (``make bench``: ``python -m tests.bench.run``), kept out of the test suite.

The test helpers are imported as ``support.*``, the way pytest sees them with ``tests/`` on
``sys.path``; running the benchmarks as a module from the repository root puts it there.
"""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
