"""What the features stage reports: which columns it kept and dropped, how, and the PCA chart."""

from __future__ import annotations

from typing import Any

from ...charts import Plot
from ._config import FeaturesConfig
from ._select import Selection

_SHOW = 12  # feature names listed in a note before "and N more"


def names_text(names: list[str]) -> str:
    """Column names for a note: the first _SHOW, then how many more."""
    shown = ", ".join(names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def report(
    sel: Selection,
    steps: list[tuple[str, Any]],
    explained: list[float] | None,
    names: list[str],
    selected: list[str],
    how: str,
    cfg: FeaturesConfig,
) -> tuple[list[str], dict[str, Any], list[Plot]]:
    """The stage's notes, details (for metrics.json) and plots for a selection."""
    n_cols = len(names)
    dropped = [n for n, keep in zip(names, sel.support) if not keep]
    by = f" ranked by {sel.estimator}" if sel.estimator else ""
    if sel.method == "none":
        notes = [f"all {n_cols} columns kept (select none); {how}"]
    else:
        kept = f"{sel.method}{by} kept {len(selected)} of {n_cols} columns in {sel.seconds:.2f} s"
        notes = [f"{kept}: {names_text(selected)}; {how}"]
    if dropped:
        notes.append(f"dropped {len(dropped)}: {names_text(dropped)}")
    details: dict[str, Any] = {
        "selected_features": selected,
        "dropped_features": dropped,
        "n_features_in": n_cols,
        "n_features_selected": len(selected),
        "selector": sel.method,
        "ranking_estimator": sel.estimator,
        "selection_seconds": round(sel.seconds, 4),
        "transform": cfg.transform,
    }
    if sel.scores is not None:
        details["feature_scores"] = {n: round(float(s), 6) for n, s in zip(names, sel.scores)}
    plots: list[Plot] = []
    named = dict(steps)
    if "pca" in named:
        pca = named["pca"]
        k = int(pca.n_components_)
        kept_variance = float(pca.explained_variance_ratio_.sum())
        notes.append(
            f"PCA on the {len(selected)} standardized kept columns: {k} components explain {kept_variance:.1%} "
            "of the variance"
        )
        details.update(pca_components=k, pca_explained_variance=round(kept_variance, 6))
        if explained:
            plots.append(pca_plot(explained, k))
    elif "scale" in named:
        notes.append(
            "the kept columns are standardized inside the model (mean and scale from the training split)"
        )
    notes.append(
        f"the exported model takes the original {n_cols} columns in their original order; the selection"
        + (" and projection run" if steps else " runs")
        + " inside it"
    )
    return notes, details, plots


def pca_plot(cumulative: list[float], k: int) -> Plot:
    """Cumulative explained variance of every component, the kept count marked."""
    xs = list(range(1, len(cumulative) + 1))
    return Plot(
        title="PCA: cumulative explained variance",
        kind="line",
        series={
            "cumulative explained variance": (xs, cumulative),
            f"kept: {k} components": ([k], [cumulative[k - 1]]),
        },
        xlabel="number of components",
        ylabel="explained variance (fraction)",
    )
