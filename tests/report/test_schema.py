"""The package's metrics schema against the project's contract copy (``../shared``, when present)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from leanml.report import metrics_schema

# The repository's sibling folder, read only when it exists (a clone anywhere else skips that test);
# ``parent`` of the filesystem root is the root, so a clone at / does not fail to import.
CONTRACT = Path(__file__).resolve().parents[2].parent / "shared" / "metrics.schema.json"


def required_paths(schema: dict[str, Any], prefix: str = "", root: dict | None = None) -> set[str]:
    """Every required key, as a dotted path, following properties, items and local $refs."""
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), f"only local $refs are followed; got {ref}"
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return required_paths(node, prefix, root)
    out = {f"{prefix}{key}" for key in schema.get("required", [])}
    for key, sub in schema.get("properties", {}).items():
        out |= required_paths(sub, f"{prefix}{key}.", root)
    if isinstance(schema.get("items"), dict):
        out |= required_paths(schema["items"], f"{prefix}[].", root)
    for sub in schema.get("additionalProperties", None) or {}, *schema.get("anyOf", []):
        if isinstance(sub, dict) and sub:
            out |= required_paths(sub, f"{prefix}*.", root)
    return out


def test_the_packaged_schema_is_a_valid_json_schema():
    import jsonschema

    schema = metrics_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert {"leanml_version", "task", "environment", "stages"} <= set(schema["required"])


def test_required_paths_follow_refs_and_items():
    schema = {
        "required": ["a"],
        "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"items": {"required": ["c"]}}},
        "$defs": {"A": {"required": ["x"]}},
    }
    assert required_paths(schema) == {"a", "a.x", "b.[].c"}


@pytest.mark.skipif(
    not CONTRACT.is_file(),
    reason=(
        "compares the packaged metrics schema with the developers' shared copy, which only their "
        "checkout has (../shared/metrics.schema.json); nothing to compare in this clone"
    ),
)
def test_the_packaged_schema_holds_every_required_key_of_the_contract():
    contract = json.loads(CONTRACT.read_text())
    missing = required_paths(contract) - required_paths(metrics_schema())
    assert not missing, f"the packaged schema lost required keys of the contract: {sorted(missing)}"
