"""The tests mirror proxy/ (tests/README.md): every module has its
``tests/unit/<package>/test_<module>.py``, or a line in the README's "Modules tested elsewhere"
saying where it is tested (naming test files that exist), never both; every unit test file is
named after a module that exists; and no test file is left at the top of tests/."""

from __future__ import annotations

import re

from support.markdown import bullets, section
from support.paths import PROXY, REPO, TESTS

UNIT = TESTS / "unit"
README = TESTS / "README.md"


def modules() -> set[str]:
    """Every module of proxy/ (``__init__.py`` files aside), as ``cache/upkeep/janitor.py``."""
    return {
        path.relative_to(PROXY).as_posix()
        for path in PROXY.rglob("*.py")
        if path.name != "__init__.py"
    }


def unit_test_of(module: str) -> str:
    """``cache/upkeep/janitor.py``: ``cache/upkeep/test_janitor.py`` (under tests/unit/)."""
    folder, _, name = module.rpartition("/")
    return f"{folder}/test_{name}" if folder else f"test_{name}"


def unit_tests() -> set[str]:
    return {path.relative_to(UNIT).as_posix() for path in UNIT.rglob("test_*.py")}


def reasons() -> dict[str, str]:
    """Module (``cache/blobs.py``) -> the README's line about where it is tested."""
    found = {}
    for item in bullets(section(README.read_text(), "Modules tested elsewhere")):
        match = re.match(r"`proxy/([^`]+\.py)`: (.+)", item)
        assert match, f"not a module and its reason: {item!r}"
        assert match.group(1) not in found, f"{match.group(1)} is listed twice"
        found[match.group(1)] = match.group(2)
    return found


def test_every_module_has_a_unit_test_file_or_a_reason() -> None:
    have = unit_tests()
    elsewhere = reasons()
    neither = sorted(m for m in modules() if unit_test_of(m) not in have and m not in elsewhere)
    both = sorted(m for m in elsewhere if unit_test_of(m) in have)
    assert neither == [], "write tests/unit/<package>/test_<module>.py, or say in tests/README.md"
    assert both == [], "it has a test file now: drop its line from tests/README.md"


def test_the_reasons_name_modules_and_test_files_that_exist() -> None:
    for module, reason in reasons().items():
        assert module in modules(), f"tests/README.md names proxy/{module}, which does not exist"
        named = re.findall(r"`(tests/[^`]+\.py)`", reason)
        assert named, f"proxy/{module}: name a test file"
        missing = [path for path in named if not (REPO / path).is_file()]
        assert missing == [], f"proxy/{module}: no such file"


def test_every_unit_test_file_is_named_after_a_module() -> None:
    expected = {unit_test_of(module) for module in modules()}
    assert sorted(unit_tests() - expected) == []


def test_unit_folders_are_packages_and_http_is_not() -> None:
    folders = [
        UNIT,
        *(path for path in UNIT.rglob("*") if path.is_dir() and path.name != "__pycache__"),
    ]
    assert [f for f in folders if not (f / "__init__.py").is_file()] == []
    assert not (TESTS / "http" / "__init__.py").exists(), "it would hide the standard library's"


def test_no_test_file_is_left_at_the_top() -> None:
    assert sorted(path.name for path in TESTS.glob("test_*.py")) == []
