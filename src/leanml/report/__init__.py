"""Reports: metrics.json, report.md and a self-contained report.html."""

from __future__ import annotations

from ._records import FailedStage, RunRecord, StageRecord
from ._write import metrics_dict, write_metrics, write_reports

__all__ = ["FailedStage", "RunRecord", "StageRecord", "metrics_dict", "write_metrics", "write_reports"]
