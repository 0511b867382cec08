"""What CloudWatch requires of an embedded-metric-format (EMF) log line before it extracts
metrics from it: the specification's JSON schema (tests/fixtures, written from its text), and
the rules of its text that a schema cannot state."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from support.paths import TESTS

EMF_SCHEMA = json.loads((TESTS / "fixtures" / "cloudwatch-emf.schema.json").read_text())
Draft202012Validator.check_schema(EMF_SCHEMA)
EMF = Draft202012Validator(EMF_SCHEMA)


def emf_violations(line: str) -> list[str]:
    """Why CloudWatch would not extract metrics from this log line: the schema, and the rules of
    the specification's text that a schema cannot state."""
    document = json.loads(line)  # one JSON object, nothing before or after it
    if not isinstance(document, dict):
        return ["not a JSON object"]
    found = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in EMF.iter_errors(document)]
    if found:
        return found
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                if not isinstance(document.get(key), str):
                    found.append(f"dimension {key}: the root has no string member of that name")
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            numbers = value if isinstance(value, list) and len(value) <= 100 else [value]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
                found.append(f"metric {metric['Name']}: {value!r} is not a number")
    return found


def assert_valid_emf(document: dict[str, Any], namespace: str) -> None:
    """What CloudWatch requires of a log line before it extracts metrics from it."""
    assert emf_violations(json.dumps(document)) == []
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == namespace
    for metric in directive["Metrics"]:
        assert set(metric) == {"Name", "Unit"}
