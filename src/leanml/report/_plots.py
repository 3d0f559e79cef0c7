"""Charts for the report, rendered with matplotlib to inline SVG."""

from __future__ import annotations

import io

import markupsafe
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..charts import Plot
from ..constraints import Constraints
from ._records import RunRecord

# One colour per technique combination in every chart of a report: the baseline black, the others
# matplotlib's tab10 minus its grey, in the order they first appear.
BASELINE_COLOUR = "black"
PALETTE = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _nothing_to_draw(plot: Plot) -> str | None:
    """Why ``plot`` would be an empty chart, or None when it has something to show."""
    values = [v for _, ys in plot.series.values() for v in ys]
    if not values:
        return "nothing was recorded for it"
    if plot.kind == "bar" and all(v == 0 for v in values):
        (label, (xs, _)), *more = plot.series.items()
        what = f"{len(xs)} {plot.xlabel or 'bars'}" + ("s" if plot.xlabel and len(xs) != 1 else "")
        series = "every series" if more else label
        return f"{series} is 0 for all {what}, so every bar would be empty"
    return None


def draw(plot: Plot) -> str:
    """Draw a stage's :class:`Plot` spec as inline SVG; a chart that would be empty (no values, or
    bars that are all 0) is one HTML line that says why instead."""
    empty = _nothing_to_draw(plot)
    if empty is not None:
        return str(markupsafe.Markup("<p><i>{}</i>: no chart: {}.</p>").format(plot.title, empty))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if plot.kind == "bar":
        labels = list(plot.series)
        width = 0.8 / max(len(labels), 1)
        for i, (label, (xs, ys)) in enumerate(plot.series.items()):
            pos = [j + i * width for j in range(len(xs))]
            ax.bar(pos, ys, width=width, label=label)
            ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(xs))])
            ax.set_xticklabels([str(x) for x in xs], rotation=45, ha="right", fontsize=7)
    else:
        for label, (xs, ys) in plot.series.items():
            if plot.kind == "scatter":
                ax.scatter(xs, ys, label=label)
            elif label in plot.points:
                ax.plot(xs, ys, linestyle="none", marker="x", markersize=6, label=label)
            else:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_title(plot.title)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    if plot.kind == "bar" and plot.zoom:
        values = [v for _, ys in plot.series.values() for v in ys]
        ax.set_ylim(*metric_limits(values, 0.0))
        ax.set_ylabel(f"{plot.ylabel} (axis zoomed to the data, not from 0)")
    if plot.kind != "bar" and "trial" in plot.xlabel.lower():
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(plot.series) > 1 or plot.kind != "bar":
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _svg(fig)


def metric_limits(values: list[float], max_drop: float) -> tuple[float, float]:
    """y-limits for metric values: never narrower than 2 points of the metric or twice the
    constraint, so that a 0.3-point difference does not fill the chart as if it were large."""
    span = max(max(values) - min(values), 2 * max_drop, 0.02)
    middle = (max(values) + min(values)) / 2
    return middle - 0.6 * span, middle + 0.6 * span


def stage_combinations(run: RunRecord) -> list[str]:
    """Each stage's model as the techniques applied to it, in a plan's words: the accepted stages
    before it and its own kind (``distill+prune``; ``baseline`` for the baseline)."""
    kept: list[str] = []
    out = []
    for s in run.stages:
        if s.kind == "baseline":
            out.append("baseline")
            continue
        out.append("+".join([*kept, s.kind]))
        if s.accepted:
            kept.append(s.kind)
    return out


def colours(run: RunRecord) -> dict[str, object]:
    """The report's one colour map: technique combination -> colour, the same in every chart
    (the stages' scatter and the plan search's)."""
    names = stage_combinations(run)
    if run.optimize:
        names += sorted({r["combination"] for r in run.optimize.get("all_trials", [])})
    out: dict[str, object] = {"baseline": BASELINE_COLOUR}
    for name in dict.fromkeys(names):
        if name not in out:
            out[name] = PALETTE[(len(out) - 1) % len(PALETTE)]
    return out


def tradeoff_scatter(run: RunRecord) -> str:
    """Metric against batch-1 latency p50, one point per stage, the baseline marked; each point in
    the colour of its technique combination (:func:`colours`)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colour = colours(run)
    for s, combination in zip(run.stages, stage_combinations(run), strict=True):
        lat = s.measurement.p50()
        marker = "*" if s.kind == "baseline" else ("o" if s.accepted else "x")
        size = 160 if s.kind == "baseline" else 60
        ax.scatter(
            [lat],
            [s.measurement.metric],
            marker=marker,
            s=size,
            color=colour[combination],
            label=f"{s.name}{'' if s.accepted else ' (rolled back)'}",
        )
    metric = run.task.get("metric", "metric")
    higher = run.higher_is_better
    ax.set_ylim(*metric_limits([s.measurement.metric for s in run.stages], _max_metric_drop(run)))
    ax.set_xlim(left=0)
    ax.set_xlabel("latency p50 at batch 1 (ms)")
    ax.set_ylabel(f"{metric} on the test split ({'higher' if higher else 'lower'} is better)")
    ax.set_title("Metric vs latency (measured on the exported artifact)")
    ax.annotate(
        "better" + (" (up-left)" if higher else " (down-left)"),
        xy=(0.02, 0.95 if higher else 0.05),
        xycoords="axes fraction",
        fontsize=8,
        color="green",
        va="top" if higher else "bottom",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _svg(fig)


def plan_scatter(run: RunRecord) -> str:
    """A planned run's search: every measured plan's validation metric against its cost, coloured
    by technique combination, the Pareto front joined, the budget and the baseline marked."""
    opt = run.optimize
    if not opt or not opt.get("all_trials"):
        return ""
    latency = opt["objective"] == "latency"
    key = "latency_ms" if latency else "size_bytes"
    scale = 1.0 if latency else 1 / 1024
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    colour = colours(run)
    groups: dict[str, list[dict]] = {}
    for row in opt["all_trials"]:
        groups.setdefault(row["combination"], []).append(row)
    for name, rows in sorted(groups.items()):
        ax.scatter(
            [r[key] * scale for r in rows],
            [r["val_metric"] for r in rows],
            s=[36 if r["feasible"] else 18 for r in rows],
            alpha=0.85,
            color=colour[name],
            label=name,
        )
    front = sorted(opt.get("pareto", []), key=lambda r: r[key])
    if front:  # ringed, and joined when there are two or more: one plan is still drawn
        ax.plot(
            [r[key] * scale for r in front],
            [r["val_metric"] for r in front],
            color="black",
            linewidth=0.8,
            marker="o",
            markersize=9,
            markerfacecolor="none",
            label=f"Pareto front ({len(front)} plan{'s' if len(front) != 1 else ''})",
        )
    base = opt["baseline"]
    ax.scatter(
        [base[key] * scale],
        [base["val_metric"]],
        marker="*",
        s=180,
        color="black",
        label="baseline",
    )
    drop = _max_metric_drop(run)
    limit = base["val_metric"] - drop if run.higher_is_better else base["val_metric"] + drop
    ax.axhline(limit, color="red", linestyle="--", linewidth=0.8, label="budget")
    ax.set_xlabel(
        f"latency p50 at batch {opt['batch_size']} (ms)" if latency else "file size (KiB)"
    )
    ax.set_ylabel(f"{run.task.get('metric', 'metric')} on the validation split")
    ax.set_title("Plans searched (each measured on its ONNX export)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _svg(fig)


def size_bars(run: RunRecord) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [s.name for s in run.stages]
    ax.bar(names, [s.measurement.size_bytes / 1024 for s in run.stages], label="on disk")
    ax.bar(
        names,
        [s.measurement.compressed_size_bytes / 1024 for s in run.stages],
        width=0.4,
        label="zlib-compressed",
    )
    ax.set_ylabel("size (KiB)")
    ax.set_xlabel("stage")
    ax.set_title("Artifact size (file bytes; smaller is better)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7)
    return _svg(fig)


def training_curves(run: RunRecord) -> list[tuple[str, str]]:
    """Loss and validation-metric curves of every stage that trained, with the best epoch marked."""
    out = []
    for s in run.stages:
        tr = s.train_result
        if tr is None or not tr.history:
            continue
        ep = [h["epoch"] for h in tr.history]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.2))
        a1.plot(
            ep, [h["train_loss"] for h in tr.history], label="train loss (the stage's objective)"
        )
        a1.plot(ep, [h["val_loss"] for h in tr.history], label="val loss (task loss)")
        a1.set_ylabel("loss")
        a2.plot(ep, [h["val_metric"] for h in tr.history], label=f"val {run.task.get('metric')}")
        a2.set_ylabel(f"val {run.task.get('metric')}")
        for a in (a1, a2):
            a.axvline(
                tr.best_epoch, color="grey", linestyle="--", label=f"best epoch {tr.best_epoch}"
            )
            a.set_xlabel("epoch")
            a.xaxis.get_major_locator().set_params(integer=True)
            a.legend(fontsize=7)
            a.grid(alpha=0.3)
        fig.suptitle(
            f"{s.name}: stopped at epoch {tr.stopped_epoch}"
            + (" (early stopping)" if tr.stopped_early else "")
        )
        out.append((s.name, _svg(fig)))
    return out


def _max_metric_drop(run: RunRecord) -> float:
    """The run's budget (a record without one: the Config's default)."""
    return Constraints.model_validate(run.constraints or {}).max_metric_drop
