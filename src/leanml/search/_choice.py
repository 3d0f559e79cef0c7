"""The winner of the plan search, chosen on validation only: the cheapest distinct plan within the
budget; for the latency objective, the finalists are first re-timed side by side with the baseline,
and a plan must beat it by ``MIN_SPEEDUP`` to count as a win."""

from __future__ import annotations

from pathlib import Path

from ..constraints import Constraints
from ..measure import MeasureConfig, paired_latency_ratio
from ..task import Task
from ._config import OptimizeConfig
from ._progress import SearchLog
from ._records import SearchResult, TrialRecord
from ._space import plan_key

# A finalist must be this much faster than the baseline, re-timed side by side, to count as a win:
# below it, the difference is within what a shared machine's noise gives.
MIN_SPEEDUP = 1.05
FINALISTS = 3


def choose(
    trials: list[TrialRecord],
    base: TrialRecord,
    *,
    config: OptimizeConfig,
    constraints: Constraints,
    task: Task,
    measure_config: MeasureConfig,
    base_path: Path,
    trial_dir: Path,
    log: SearchLog,
) -> SearchResult:
    """The winning plan of ``trials`` against the baseline ``base`` (whose ONNX file is
    ``base_path``; trial N's is ``trial_dir/NNNN/model.onnx``), or no plan and why."""
    distinct: dict[str, TrialRecord] = {}
    for r in sorted((r for r in trials if r.feasible and r.plan), key=lambda r: (r.cost, r.number)):
        distinct.setdefault(plan_key(r.plan), r)
    ranked = list(distinct.values())
    if not ranked:
        over = len([r for r in trials if not r.feasible])
        return SearchResult(
            [],
            f"no plan held the budget on the validation split ({len(trials)} measured, {over} over "
            f"max_metric_drop {constraints.max_metric_drop:g})",
            trials,
            base,
        )
    if config.objective == "size":
        best = ranked[0]
        if best.size_bytes >= base.size_bytes:
            return SearchResult([], "no plan within the budget made the file smaller", trials, base)
        return SearchResult(
            best.plan,
            f"trial {best.number}, {best.label}: {base.size_bytes / best.size_bytes:.2f}x smaller on validation",
            trials,
            base,
        )
    finalists = []
    for r in ranked[:FINALISTS]:
        path = trial_dir / f"{r.number:04d}" / "model.onnx"
        if not path.exists():  # measured by a run whose files are gone: its figure stands
            finalists.append(
                {
                    "trial": r.number,
                    "label": r.label,
                    "speedup": base.cost / r.cost,
                    "paired": False,
                }
            )
            continue
        with log.progress(f"re-timing {r.label} side by side") as step:
            ratio = paired_latency_ratio(
                base_path, path, task.data.val.x, measure_config, progress=step.update
            )[config.batch_size]
        finalists.append(
            {"trial": r.number, "label": r.label, "speedup": 1 / ratio, "paired": True}
        )
    best_f = max(finalists, key=lambda f: f["speedup"])
    log.log(
        "  finalists re-timed side by side with the baseline: "
        + "; ".join(f"{f['label']} {f['speedup']:.2f}x" for f in finalists)
    )
    if best_f["speedup"] < MIN_SPEEDUP:
        return SearchResult(
            [],
            f"the fastest plan within the budget ({best_f['label']}) was {best_f['speedup']:.2f}x the baseline's "
            f"speed at batch {config.batch_size}, re-timed side by side: not a real gain",
            trials,
            base,
            finalists,
        )
    winner = next(r for r in ranked if r.number == best_f["trial"])
    return SearchResult(
        winner.plan,
        f"trial {winner.number}, {winner.label}: {best_f['speedup']:.2f}x faster at batch "
        f"{config.batch_size} on validation (re-timed side by side with the baseline)",
        trials,
        base,
        finalists,
    )
