"""docs/architecture.md names every module of proxy/ in its module table, once, and names no
module that does not exist: the table is where a newcomer reads what each module is for."""

from __future__ import annotations

import re
from collections import Counter

from support.markdown import section, table_rows
from support.paths import DOCS, PROXY


def modules() -> set[str]:
    """Every module of proxy/ (``__init__.py`` files aside), as ``cache/blobs.py``."""
    return {
        path.relative_to(PROXY).as_posix()
        for path in PROXY.rglob("*.py")
        if path.name != "__init__.py"
    }


def documented(document: str) -> list[str]:
    """The modules named in the first column of the "Modules" section's table."""
    rows = table_rows(section(document, "Modules"))
    return [name for row in rows for name in re.findall(r"`([^`]+\.py)`", row[0])]


def test_every_module_has_a_row() -> None:
    named = documented((DOCS / "architecture.md").read_text())
    assert sorted(modules() - set(named)) == [], "add a row to docs/architecture.md's Modules"
    assert [name for name, count in Counter(named).items() if count > 1] == []


def test_every_row_names_a_module_that_exists() -> None:
    named = documented((DOCS / "architecture.md").read_text())
    assert sorted(set(named) - modules()) == []


def test_the_table_is_read_from_its_first_column_only() -> None:
    document = (
        "# A\n\n## Modules\n\n| module | one idea |\n| --- | --- |\n"
        "| `a.py`, `b/c.py` | uses `d.py` |\n| `e.py` | |\n\n## Next\n\n| `f.py` | x |\n"
    )
    assert documented(document) == ["a.py", "b/c.py", "e.py"]
