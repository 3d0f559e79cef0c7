"""The metrics.json contract, shipped inside the package (``leanml/report/metrics.schema.json``)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SCHEMA_FILE = "metrics.schema.json"


def metrics_schema() -> dict[str, Any]:
    """The JSON Schema that metrics.json and ``leanml run --json`` follow."""
    text = resources.files("leanml.report").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)
