"""Reports: metrics.json, report.md and a self-contained report.html."""

from __future__ import annotations

from ._records import (
    FailedStage,
    RunRecord,
    SkippedStage,
    StageRecord,
    TreeReference,
    deploy_line,
    reference_line,
)
from ._schema import metrics_schema
from ._write import (
    human_bytes,
    human_count,
    human_params,
    metrics_dict,
    write_metrics,
    write_reports,
)

__all__ = [
    "FailedStage",
    "RunRecord",
    "SkippedStage",
    "StageRecord",
    "TreeReference",
    "deploy_line",
    "human_bytes",
    "human_count",
    "human_params",
    "metrics_dict",
    "metrics_schema",
    "reference_line",
    "write_metrics",
    "write_reports",
]
