"""Basic credentials in an ``Authorization`` header, as registries and their clients send them.

``docker login`` sends ``Basic base64(user:password)`` to a registry, and the proxy sends its
upstream account's the same way to a token service. One encoder and one decoder: the proxy's own
logins (``proxy.http.access``), the upstream token flow (``proxy.upstream.auth``) and the fake
registries of the tests all use these.
"""

from __future__ import annotations

import base64
import binascii


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` header value for ``username`` and ``password``."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of a ``Basic`` Authorization header; None for another scheme, or for
    anything malformed (not base64, not UTF-8, no colon)."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None
