"""Imports point down: a module imports from its own layer or the layers below it, in the order
of docs/architecture.md's Layers table; only the HTTP edge (proxy/http/) knows aiohttp's web
server, and the registry domain (proxy/registry/) knows no aiohttp at all.

Read from the source (every module's syntax tree, imports inside functions included), so a module
that no test imports is checked too. The upstream client and S3 may use aiohttp's client.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from support.markdown import section, table_rows
from support.paths import DOCS, PROXY


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


# --- the layers ---------------------------------------------------------------------------------


def layers(document: str) -> list[set[str]]:
    """The Layers table of docs/architecture.md, top first: each layer's packages and top-level
    modules as named in this repository (``cache``, ``cache/upkeep``, ``services``)."""
    return [
        {name.removesuffix("/").removesuffix(".py") for name in re.findall(r"`([^`]+)`", row[1])}
        for row in table_rows(section(document, "Layers"))
    ]


def part_of(module: str, known: set[str]) -> str | None:
    """The package (the deepest one the layers name) or top-level module ``module`` belongs to;
    ``module`` as ``proxy.cache.upkeep.janitor``."""
    parts = module.split(".")[1:]
    for length in range(len(parts), 0, -1):
        name = "/".join(parts[:length])
        if name in known:
            return name
    return None


def imported(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a proxy module in ``source``; ``from proxy.x import y``
    counts as an import of ``proxy.x.y``, which is ``proxy.x`` itself when ``y`` is no module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("proxy.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proxy"):
            assert node.level == 0, "relative imports are not used in proxy/"
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def upward_imports(module: str, source: str, order: list[set[str]]) -> list[str]:
    """Each import in ``source`` (the text of ``module``) of a module in a higher layer."""
    known = set().union(*order)
    level = {name: index for index, names in enumerate(order) for name in names}
    own = part_of(module, known)
    assert own is not None, f"{module} is in no layer of docs/architecture.md"
    found = []
    for line, target in imported(source):
        theirs = part_of(target, known)
        if theirs is not None and level[theirs] < level[own]:
            found.append(
                f"{module}:{line} imports {target} (layer {level[theirs] + 1}: {theirs}) "
                f"from layer {level[own] + 1} ({own})"
            )
    return found


def proxy_modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PROXY.rglob("*.py")):
        parts = path.relative_to(PROXY.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


ARCHITECTURE = (DOCS / "architecture.md").read_text()


def test_every_package_and_top_level_module_has_a_layer() -> None:
    known = set().union(*layers(ARCHITECTURE))
    unplaced = sorted(
        module for module in proxy_modules() if module != "proxy" and part_of(module, known) is None
    )
    assert unplaced == [], "give them a layer in docs/architecture.md's Layers table"
    assert len(layers(ARCHITECTURE)) >= 5


def test_imports_point_down() -> None:
    order = layers(ARCHITECTURE)
    found = [
        problem
        for module, path in proxy_modules().items()
        if module != "proxy"
        for problem in upward_imports(module, path.read_text(), order)
    ]
    assert found == []


def test_an_import_from_a_layer_above_is_seen() -> None:
    order = [{"http"}, {"cache", "cache/upkeep"}, {"storage"}]
    assert upward_imports("proxy.storage.s3", "from proxy.http.app import create_app\n", order)
    assert upward_imports("proxy.storage.s3", "def f():\n    import proxy.cache.keys\n", order)
    assert upward_imports("proxy.cache.upkeep.janitor", "from proxy import http\n", order)
    sideways = "from proxy.cache.keys import blob_key\nfrom proxy.storage import Storage\n"
    assert upward_imports("proxy.cache.upkeep.janitor", sideways, order) == []
