"""Settings for tests: fields changed by name, whatever section they live in.

``settings_with(tag_ttl=0, location=StorageLocation(path=p))`` is ``Settings()`` with
``policy.tag_ttl`` and ``storage.location`` changed. Field names are unique across the sections
(tests/unit/test_config.py checks it), so a name says which section it belongs to.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from proxy.config import Settings


def section_of(name: str) -> str:
    """The section holding the field ``name`` (``tag_ttl``: ``policy``)."""
    for section in fields(Settings):
        if name in {column.name for column in fields(getattr(Settings(), section.name))}:
            return section.name
    raise TypeError(f"no section of Settings has a field {name!r}")


def settings_with(base: Settings | None = None, /, **changes: Any) -> Settings:
    settings = base if base is not None else Settings()
    by_section: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        by_section.setdefault(section_of(name), {})[name] = value
    return replace(
        settings,
        **{name: replace(getattr(settings, name), **values) for name, values in by_section.items()},
    )
