"""proxy/http/clientcap.py on its own. Through the app (503 beyond the cap, clients that stop
reading): tests/http/test_clientcap.py.
"""

from __future__ import annotations

import pytest

from proxy.http.clientcap import ClientCap


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ClientCap(0)
