"""Imports point down: only the HTTP edge (proxy/http/) knows aiohttp's web server, and the
registry domain (proxy/registry/) knows no aiohttp at all.

Read from the source (every module's syntax tree), so a module that no test imports is checked
too. The upstream client and S3 may use aiohttp's client.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
from support.paths import PROXY


def _is_web(module: str) -> bool:
    """aiohttp's web server: ``aiohttp.web``, its parts (``aiohttp.web_request``, ...), and
    ``aiohttp.typedefs`` (the handler and middleware types)."""
    return module in ("aiohttp.web", "aiohttp.typedefs") or module.startswith(
        ("aiohttp.web.", "aiohttp.web_")
    )


def web_uses(source: str) -> list[str]:
    """Each way ``source`` reaches aiohttp's web module: an import of it or of a name in it,
    or an ``aiohttp.web`` attribute of a plain ``import aiohttp``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _is_web(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(_is_web(name) for name in names):
                found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "aiohttp"
            and _is_web(f"aiohttp.{node.attr}")
        ):
            found.append(f"aiohttp.{node.attr}")
    return found


def aiohttp_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "aiohttp"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aiohttp":
            found.append(str(node.module))
    return found


def _uses(under: Path, find: Callable[[str], list[str]]) -> list[str]:
    modules = sorted(under.rglob("*.py"))
    assert modules, f"no modules under {under}"
    return [
        f"{path.relative_to(PROXY.parent)}: {use}"
        for path in modules
        if PROXY / "http" not in path.parents
        for use in find(path.read_text())
    ]


def test_only_the_http_edge_imports_aiohttp_web() -> None:
    assert _uses(PROXY, web_uses) == []


def test_the_registry_domain_imports_no_aiohttp() -> None:
    assert _uses(PROXY / "registry", aiohttp_imports) == []


@pytest.mark.parametrize(
    "source",
    [
        "from aiohttp import web",
        "import aiohttp.web",
        "from aiohttp.web import Response",
        "from aiohttp import web_response",
        "from aiohttp.web_request import Request",
        "from aiohttp.typedefs import Handler",
        "import aiohttp\nx = aiohttp.web.Response",
    ],
)
def test_every_route_to_aiohttp_web_is_seen(source: str) -> None:
    assert web_uses(source)


def test_the_aiohttp_client_is_allowed() -> None:
    source = "import aiohttp\nfrom aiohttp import hdrs\nsession = aiohttp.ClientSession\n"
    assert web_uses(source) == []
    assert aiohttp_imports(source) == ["aiohttp", "aiohttp"]
