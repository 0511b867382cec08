"""Where the tests keep what is slow to make and never changes between runs on one machine.

``PROXY_TEST_CACHE_DIR``, default ``~/.cache/registry-proxy-tests`` (``$XDG_CACHE_HOME`` when
set): the Debian base of the image tests, Debian trixie's Docker 26 for the CodeBuild tests.
Everything there is named after the recipe that made it and written under a temporary name
first, so a run that dies halfway never leaves a file that a later run would trust.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    configured = os.environ.get("PROXY_TEST_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "registry-proxy-tests"
