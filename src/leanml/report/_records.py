"""What a run recorded about each stage, and its metrics.json form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._text import signed, times
from ..charts import Plot
from ..measure import Measurement
from ..training import TrainResult

_REQUIRED = (
    "name",
    "kind",
    "metric",
    "metric_delta",
    "params",
    "size_bytes",
    "latency_ms",
    "artifact",
)


@dataclass
class StageRecord:
    """One row of the report: a stage (or the baseline), measured on its exported artifact."""

    name: str
    kind: str
    measurement: Measurement
    metric_delta: float
    artifact: str
    accepted: bool = True
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    plots: list[Plot] = field(default_factory=list)
    train_result: TrainResult | None = None
    val_metric: float | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        m = self.measurement
        rec: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "metric": m.metric,
            "metric_delta": self.metric_delta,
            "val_metric": self.val_metric,
            "params": m.params,
            "nonzero_params": m.nonzero_params,
            "flops": m.flops,
            "size_bytes": m.size_bytes,
            "compressed_size_bytes": m.compressed_size_bytes,
            "peak_memory_bytes": m.peak_memory_bytes,
            "latency_ms": m.latency_record(),
            "accepted": self.accepted,
            "reason": self.reason,
            "notes": list(self.notes),
            "artifact": self.artifact,
            "duration_s": round(self.duration_s, 3),
        }
        if self.train_result is not None:
            tr = self.train_result
            rec["training"] = {
                "epochs": tr.epochs,
                "stopped_epoch": tr.stopped_epoch,
                "best_epoch": tr.best_epoch,
                "stopped_early": tr.stopped_early,
                "history": tr.history,
                **tr.summary(),  # epochs run, why it stopped, the lr and the range test's curve
            }
        for k, v in self.details.items():
            if k not in _REQUIRED and k not in rec:
                rec[k] = v
            elif k not in _REQUIRED:
                rec.setdefault("details", {})[k] = v
        return rec


@dataclass
class FailedStage:
    """A stage that raised: kept in the report with the error, the run went on with the previous model."""

    name: str
    kind: str
    error: str


@dataclass
class SkippedStage:
    """A stage that does not apply to the model (prune on a Keras module): said, not run."""

    name: str
    kind: str
    reason: str


@dataclass
class TreeReference:
    """A gradient-boosted tree model fitted beside a tabular torch baseline, for comparison only:
    never a stage, never deployed. Measured on its exported ONNX model with the baseline's harness.

    Attributes:
        model: the estimator's class name (``HistGradientBoostingClassifier``).
        measurement: its test metric, batch-1 latency and size.
        note: why there is no latency comparison, when there is none (e.g. the baseline was timed
            in PyTorch).
    """

    model: str
    measurement: Measurement
    note: str | None = None

    def as_dict(self, baseline: Measurement, metric: str, higher_is_better: bool) -> dict[str, Any]:
        m = self.measurement
        comparable = baseline.runtime == m.runtime and 1 in baseline.latency and 1 in m.latency
        ratio = m.p50(1) / baseline.p50(1) if comparable and baseline.p50(1) > 0 else None
        diff = m.metric - baseline.metric
        return {
            "model": self.model,
            "spec": f"sklearn:{self.model}",
            "metric": m.metric,
            "latency_p50_ms_b1": m.p50(1) if 1 in m.latency else None,
            "latency_ratio_b1": ratio,
            "size_bytes": m.size_bytes,
            "beats_baseline": diff > 0 if higher_is_better else diff < 0,
            "note": reference_line(
                self.model, metric, m.metric, baseline.metric, ratio, higher_is_better, self.note
            ),
        }


def reference_line(
    model: str,
    metric: str,
    value: float,
    baseline: float,
    latency_ratio: float | None,
    higher_is_better: bool,
    why_no_latency: str | None = None,
) -> str:
    """One plain sentence comparing the tree reference with the baseline: "beats" only when its
    test metric is better, "matches" when equal, else the net is ahead."""
    what = f"A gradient-boosted tree model ({model}, defaults)"
    fmt = ".4f" if metric in ("accuracy", "f1") else ".4g"
    figures = f"test {metric} {value:{fmt}} vs the baseline's {baseline:{fmt}}"
    if latency_ratio is not None:
        at = f" at {latency_ratio:.2g}x its batch-1 latency"
    else:
        at = f" (latency not compared: {why_no_latency})" if why_no_latency else ""
    better = value > baseline if higher_is_better else value < baseline
    if better:
        return f"{what} beats the baseline: {figures}{at}: try `model: sklearn:{model}`."
    if value == baseline:
        return f"{what} matches the baseline: {figures}{at}."
    return f"The baseline net is ahead of {what[0].lower()}{what[1:]}: {figures}{at}."


@dataclass
class RunRecord:
    """A whole run: what metrics.json, report.md and report.html are written from."""

    leanml_version: str
    task: dict[str, Any]
    environment: dict[str, Any]
    stages: list[StageRecord]
    final: str
    constraints: dict[str, Any]
    higher_is_better: bool
    failed: list[FailedStage] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    skipped: list[SkippedStage] = field(default_factory=list)
    optimize: dict[str, Any] | None = None  # the search, when leanml planned the stages
    reference: TreeReference | None = None  # report.tree_reference, for tabular torch baselines

    def final_record(self) -> StageRecord:
        return next(s for s in self.stages if s.name == self.final)

    def summary(self) -> dict[str, Any] | None:
        """What to deploy: the final accepted model against the baseline, both measured on their
        exported artifacts in this run (ratios above 1 are smaller / faster)."""
        if not self.stages:
            return None
        base, final = self.stages[0].measurement, self.final_record().measurement
        if base.runtime != final.runtime:  # latencies from two runtimes do not compare
            return None
        batches = sorted(b for b in final.latency if b in base.latency and final.p50(b) > 0)
        latency = {f"batch_{b}": base.p50(b) / final.p50(b) for b in batches}
        if len(batches) > 1:
            latency["batch_n"] = latency[f"batch_{batches[-1]}"]
        return {
            "final_stage": self.final,
            "model_path": "model.onnx",
            "metric": final.metric,
            "metric_delta": final.metric - base.metric,
            "size_ratio": base.size_bytes / final.size_bytes if final.size_bytes else 1.0,
            "latency_ratio": latency,
        }

    def deploy_line(self) -> str:
        """One line for the end of a run: what to deploy and what it bought, vs the baseline."""
        return deploy_line(self.summary(), self.task.get("metric", "metric"))

    def as_dict(self) -> dict[str, Any]:
        out = {
            "leanml_version": self.leanml_version,
            "task": self.task,
            "environment": self.environment,
            "constraints": self.constraints,
            "stages": [s.as_dict() for s in self.stages],
            "final": self.final,
            "failed_stages": [f.__dict__ for f in self.failed],
            "skipped_stages": [k.__dict__ for k in self.skipped],
        }
        summary = self.summary()
        if summary is not None:
            out["summary"] = summary
        if self.optimize is not None:
            out["optimize"] = self.optimize
        if self.reference is not None and self.stages:
            out["reference"] = self.reference.as_dict(
                self.stages[0].measurement, self.task.get("metric", "metric"), self.higher_is_better
            )
        return out


def deploy_line(summary: dict[str, Any] | None, metric: str) -> str:
    """The deploy line of a metrics.json ``summary`` (``leanml run``'s last line, ``leanml show``)."""
    if summary is None:
        return "the final model's latency was measured in another runtime than the baseline's"
    if summary["final_stage"] == "baseline":
        return "deploy model.onnx: no stage beat the baseline within the constraints; it is the baseline"

    parts = []
    lat = summary["latency_ratio"]
    if "batch_1" in lat:
        parts.append(times(lat["batch_1"], "faster", "slower") + " at batch 1")
    n = max((int(k.split("_")[1]) for k in lat if k.split("_")[1].isdigit()), default=1)
    if n > 1:
        parts.append(times(lat[f"batch_{n}"], "faster", "slower") + f" at batch {n}")
    parts.append(times(summary["size_ratio"], "smaller", "larger"))
    delta = summary["metric_delta"]
    points = metric in ("accuracy", "f1", "agreement")
    parts.append(f"{metric} " + (f"{signed(delta * 100, 2)} pt" if points else signed(delta)))
    return (
        f"deploy {summary['model_path']} ({summary['final_stage']}): "
        + ", ".join(parts)
        + " vs the baseline"
    )
