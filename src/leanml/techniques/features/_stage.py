"""The ``features`` stage: keep the columns that matter (and optionally project them), baked into the model.

Selection runs on the training split with scikit-learn's selectors (see ``_features_select``). The
new model takes the ORIGINAL columns in their original order and does the selection and projection
inside, so the exported ONNX needs no preprocessing at deploy time:

- a scikit-learn model becomes ``Pipeline([ColumnSelect, engineering?, StandardScaler?, PCA?,
  estimator])``, refit (``engineer``: new columns from the kept ones, see ``_engineer``);
- a PyTorch model is rebuilt by its factory for the reduced width and retrained from scratch behind a
  fixed front (index-select + the scaling/PCA as one affine map).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from ..._utils import seed_everything
from ...charts import Plot
from ...data import Split
from ...errors import InvalidInputError, StageError
from ...metrics import FIDELITY_METRICS
from ...models import Model
from ...runtime import sklearn_outputs
from ...search import Choice
from ...task import Task
from ...training import TrainResult, predict
from .._base import Stage, StageContext, StageResult, register_stage
from . import _plan
from ._config import FeaturesConfig
from ._report import names_text, report
from ._select import Selection, ranking_estimator, resolve_count, select_columns
from ._torch import FeatureModel, front_from_steps


@register_stage("features")
class FeaturesStage(Stage[FeaturesConfig]):
    """Select columns (and optionally standardize or project them), baked into the exported model."""

    Config = FeaturesConfig
    forms = ("torch", "sklearn")
    contract_example: ClassVar[dict[str, Any] | None] = {
        "select": "rfe",
        "n_features": 5,
        "step": 5,
        "curve_points": 3,
    }
    contract_task: ClassVar[dict[str, Any]] = {
        "data": "breast_cancer",
        "model": "mlp",
        "model_args": {"width": 8},
    }
    plan_order: ClassVar[int | None] = 20  # fewer inputs first: every later stage trains on them

    @classmethod
    def plan_choices(cls, task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
        return _plan.choices(task, model, epochs=epochs, objective=objective)

    def check_form(self, model: Model) -> None:
        super().check_form(model)
        if model.torch is not None and not model.factory:
            raise InvalidInputError(
                "the features stage rebuilds a PyTorch network for fewer inputs, so it needs the "
                "network's factory: give its name (e.g. 'mlp' or 'pkg.mod:function') with "
                "model_args, or a leanml Model with factory set"
            )

    def check(self, task: Task) -> None:
        cfg = self.config
        x = task.data.train.x
        if isinstance(x, dict) or task.data.kind != "tabular" or x.ndim != 2:
            shape = (
                "named arrays" if isinstance(x, dict) else f"samples shaped {tuple(x.shape[1:])}"
            )
            raise InvalidInputError(
                f"stage 'features' works on tabular data (rows of numeric columns); {task.data.name!r} is "
                f"{task.data.kind} data ({shape}): remove the features stage, or give tabular data"
            )
        n = x.shape[1]
        resolve_count(cfg.n_features, n)
        if cfg.n_components is not None and cfg.n_components > n:
            raise InvalidInputError(
                f"features.n_components is {cfg.n_components} but the data has only {n} columns; give at "
                f"most {n}, or pca_variance (e.g. 0.95) instead"
            )
        if cfg.select != "variance":
            constant = np.flatnonzero(np.ptp(np.asarray(x, dtype=np.float64), axis=0) == 0)
            if len(constant):
                names = task.data.feature_names or [f"x{i}" for i in range(n)]
                shown = names_text([names[i] for i in constant])
                raise InvalidInputError(
                    f"features: column(s) {shown} are constant on the training split and carry no "
                    "information; drop them from the data, or use select: variance, which drops them"
                )
        y = task.data.train.y
        if task.metric.name in FIDELITY_METRICS or y is None or y.ndim > 1:
            raise InvalidInputError(
                f"stage 'features' needs one label or target per row to rank columns; task.metric "
                f"{task.metric.name!r} compares outputs with a reference model: use a labelled metric"
            )
        if cfg.engineer and task.model_kind != "sklearn":
            raise InvalidInputError(
                "features.engineer works on scikit-learn models; a PyTorch model's baked-in front has "
                "no log/quantile/poly/bins ops: drop engineer, or use a sklearn model (sklearn:Name)"
            )
        if cfg.estimator == "model" and task.model_kind != "sklearn":
            raise InvalidInputError(
                "features.estimator 'model' needs a scikit-learn model exposing coef_ or "
                "feature_importances_; a PyTorch model does not: use estimator auto, linear or gbm"
            )

    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        cfg = self.config
        task = ctx.task
        self.check(task)
        train, val = task.data.train, task.data.val
        x_tr, y_tr = _arrays(train)
        x_va, y_va = _arrays(val)
        n_cols = x_tr.shape[1]
        names = list(task.data.feature_names or [f"x{i}" for i in range(n_cols)])
        from ._sklearn import final_estimator, sklearn_pipeline

        base = final_estimator(model.sklearn) if model.form == "sklearn" else None
        if cfg.select == "none" and cfg.transform == "none" and not cfg.engineer:
            return StageResult(
                model, notes=["select none and transform none: the model is unchanged"]
            )

        ctx.log(f"  selecting columns ({cfg.select})")
        auto = cfg.n_features == "auto" and cfg.select in ("mutual_info", "importance", "rfe")
        sel = select_columns(
            x_tr,
            y_tr,
            method=cfg.select,
            n_features=1 if auto else resolve_count(cfg.n_features, n_cols),
            base=base,
            estimator=cfg.estimator,
            classification=task.is_classification,
            metric=task.metric.name,
            variance_threshold=cfg.variance_threshold,
            correlation_threshold=cfg.correlation_threshold,
            step=cfg.step,
            cv=cfg.cv,
            seed=ctx.seed,
            permutation_score=_permutation_score(model, task, y_va),
            x_val=x_va,
        )
        if auto:
            _pick_count(sel, cfg, base, task, ctx, (x_tr, y_tr, x_va, y_va))
        idx = sel.indices
        if len(idx) == n_cols and cfg.transform == "none" and not cfg.engineer:
            # Nothing to remove: refitting or retraining would only change the model by chance.
            notes = [
                f"{sel.method} kept all {n_cols} columns ({_why_all(cfg)}); the model is unchanged"
            ]
            details = {"selected_features": names, "dropped_features": [], "n_features_in": n_cols}
            details.update(
                n_features_selected=n_cols, selector=sel.method, ranking_estimator=sel.estimator
            )
            details["selection_seconds"] = round(sel.seconds, 4)
            return StageResult(model, notes=notes, details=details)
        from ._engineer import Builder, engineer_kinds, report_engineering

        build = Builder(cfg, x_tr[:, idx], y_tr, sel, idx, task.is_classification, ctx.seed)
        kinds, auto_choice = engineer_kinds(cfg, build, base, task, ctx, (x_tr, y_tr, x_va, y_va))
        steps, explained, eng_plan = build(kinds)
        train_result: TrainResult | None = None
        if model.form == "sklearn":
            ctx.log(f"  refitting {type(base).__name__} on {len(idx)} columns")
            pipe = sklearn_pipeline(idx, n_cols, steps, base)
            pipe.fit(x_tr, y_tr)
            new = Model(
                sklearn=pipe,
                model_args=dict(model.model_args),
                factory=model.factory,
                info=dict(model.info),
            )
            how = f"refit {type(base).__name__} on them"
        else:
            new, train_result = _retrain_torch(model, idx, steps, n_cols, ctx, cfg.train)
            how = f"rebuilt {model.factory} for {_width(idx, steps)} inputs and retrained it from scratch"
        selected = [names[i] for i in idx]
        new.info["selected_features"] = selected

        notes, details, plots = report(sel, steps, explained, names, selected, how, cfg)
        report_engineering(notes, details, eng_plan, auto_choice, selected, task.metric.name)
        curve = _curve(sel, cfg, base, model, new, task, ctx, (x_tr, y_tr, x_va, y_va))
        if curve is not None:
            plots.insert(0, curve[0])
            details["metric_curve"] = curve[1]
        before, after = ctx.measure(model), ctx.measure(new)
        notes.append(
            f"on the val split, {task.metric.name} {before.metric:.4f} -> {after.metric:.4f}; batch-1 latency "
            f"p50 {before.p50():.4f} -> {after.p50():.4f} ms; ONNX size {before.size_bytes / 1024:.1f} -> "
            f"{after.size_bytes / 1024:.1f} KiB"
        )
        details["before"] = _facts(before)
        details["after"] = _facts(after)
        return StageResult(
            new, notes=notes, details=details, plots=plots, train_result=train_result
        )


def _why_all(cfg: FeaturesConfig) -> str:
    if cfg.select == "variance":
        return f"every column's variance is above variance_threshold {cfg.variance_threshold}"
    if cfg.select == "correlation":
        return f"no pair has |correlation| above correlation_threshold {cfg.correlation_threshold}"
    if cfg.select == "rfecv":
        return "cross-validation scored all columns best"
    return "n_features is the column count"


def _arrays(split: Split) -> tuple[np.ndarray, np.ndarray]:
    x = split.x
    assert not isinstance(x, dict) and split.y is not None
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1), split.y


def _width(idx: np.ndarray, steps: list[tuple[str, Any]]) -> int:
    named = dict(steps)
    return int(named["pca"].n_components_) if "pca" in named else len(idx)


def _retrain_torch(
    model: Model,
    idx: np.ndarray,
    steps: list[tuple[str, Any]],
    n_cols: int,
    ctx: StageContext,
    overrides: dict[str, Any],
) -> tuple[Model, TrainResult]:
    """A fresh network for the reduced width, behind a fixed front, trained with the shared trainer."""
    import torch

    if not model.factory:
        raise StageError(
            "the features stage rebuilds the network for fewer inputs, and this PyTorch model has no "
            "factory (task.model) to rebuild it from"
        )
    front = front_from_steps(n_cols, idx, steps)
    data = ctx.task.data

    def reduce(s: Split) -> Split:
        return Split(predict(front, s.x), s.y)

    reduced = dataclasses.replace(
        ctx.task,
        data=dataclasses.replace(
            data,
            train=reduce(data.train),
            val=reduce(data.val),
            test=reduce(data.test),
            feature_names=None,
        ),
    )
    seed_everything(ctx.seed)
    try:
        net = reduced.build_torch_model(model.model_args, model.factory)
        composed = FeatureModel(front, net)
        with torch.inference_mode():
            composed.eval()(torch.as_tensor(data.train.head(2).x))
    except Exception as e:
        raise StageError(
            f"cannot rebuild {model.factory!r} for {front.out_features} inputs: {str(e).splitlines()[0][:200]}"
        ) from e
    ctx.log(f"  retraining {model.factory} on {front.out_features} inputs")
    result = ctx.fit(composed, overrides or None, description="retrain on kept columns")
    info = dict(model.info)
    return Model(
        torch=composed, model_args=dict(model.model_args), factory=model.factory, info=info
    ), result


def _curve(
    sel: Selection,
    cfg: FeaturesConfig,
    base: Any,
    model: Model,
    new: Model,
    task: Task,
    ctx: StageContext,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[Plot, dict[str, Any]] | None:
    """Metric against number of kept columns: RFECV's cross-validated scores, or a sweep on val."""
    metric = task.metric.name
    k = len(sel.indices)
    if sel.cv_curve is not None:
        counts, scores = sel.cv_curve
        plot = Plot(
            title=f"RFECV: cross-validated {metric} vs number of features ({sel.estimator})",
            kind="line",
            series={
                f"{cfg.cv}-fold {metric}": (counts, scores),
                f"chosen: {k} features": (
                    [k],
                    [scores[counts.index(k)] if k in counts else max(scores)],
                ),
            },
            xlabel="number of features",
            ylabel=metric,
        )
        return plot, {
            "n_features": counts,
            "metric": scores,
            "source": f"RFECV {cfg.cv}-fold cross-validation",
        }
    if sel.scores is None or (cfg.curve_points == 0 and "auto_curve" not in sel.extra):
        return None
    n_cols = arrays[0].shape[1]
    if "auto_curve" in sel.extra:
        counts, values, label = sel.extra["auto_curve"]
    else:
        est, label = _proxy(cfg, base, task, ctx.seed)
        grid = np.unique(np.round(np.geomspace(1, n_cols, cfg.curve_points)).astype(int))
        counts = sorted({int(c) for c in grid} | {k})
        values = _count_curve(sel.scores, counts, est, task, arrays)
    series: dict[str, tuple[list[Any], list[float]]] = {
        f"val {metric}, {label} on the top-k columns": (counts, values)
    }
    if new.form == "torch" and cfg.transform == "none":
        series[f"the retrained model ({k} columns)"] = ([k], [ctx.evaluate(new, "val")])
    plot = Plot(
        title=f"{metric} vs number of features ({sel.method} ranking)",
        kind="line",
        series=series,
        xlabel="number of features",
        ylabel=metric,
    )
    return plot, {
        "n_features": counts,
        "metric": values,
        "source": f"val split, {label} refit on the top-k columns",
    }


def _permutation_score(model: Model, task: Task, y_val: np.ndarray) -> Any:
    """The trained model's task metric on (modified) validation rows, higher = better."""
    sign = 1.0 if task.metric.higher_is_better else -1.0

    def score(x: np.ndarray) -> float:
        if model.form == "sklearn":
            out = sklearn_outputs(model.sklearn, x)
        else:
            out = predict(model.torch, x.reshape((len(x), *task.data.input_shape)))
        return sign * task.metric(out, y_val)

    return score


def _proxy(cfg: FeaturesConfig, base: Any, task: Task, seed: int) -> tuple[Any, str]:
    """The estimator refit on the top-k columns to draw the metric-vs-count curve."""
    if base is not None:
        return base, type(base).__name__
    est, _, label = ranking_estimator(
        "linear" if cfg.estimator == "linear" else "gbm",
        None,
        classification=task.is_classification,
        seed=seed,
    )
    return est, label


def _count_curve(
    scores: np.ndarray,
    counts: list[int],
    est: Any,
    task: Task,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> list[float]:
    """The validation metric of ``est`` refit on the top-``c`` columns by ``scores``, for each count."""
    from sklearn.base import clone

    x_tr, y_tr, x_va, y_va = arrays
    order = np.argsort(-scores, kind="stable")
    values = []
    for c in counts:
        cols = np.sort(order[:c])
        fitted = clone(est).fit(x_tr[:, cols], y_tr)
        values.append(task.metric(sklearn_outputs(fitted, x_va[:, cols]), y_va))
    return values


# n_features: auto keeps the fewest columns whose validation metric is within this of the best
_AUTO_TOLERANCE = 0.005


def _pick_count(
    sel: Selection,
    cfg: FeaturesConfig,
    base: Any,
    task: Task,
    ctx: StageContext,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """``n_features: auto``: the metric-vs-count curve on the validation split picks the count."""
    assert sel.scores is not None
    n_cols = len(sel.scores)
    if n_cols <= 40:
        counts = list(range(1, n_cols + 1))
    else:
        counts = sorted({int(c) for c in np.round(np.geomspace(1, n_cols, 30))})
    est, label = _proxy(cfg, base, task, ctx.seed)
    values = _count_curve(sel.scores, counts, est, task, arrays)
    sign = 1.0 if task.metric.higher_is_better else -1.0
    best = max(sign * v for v in values)
    k = next(
        c
        for c, v in zip(counts, values)
        if sign * v >= best - _AUTO_TOLERANCE * max(1.0, abs(best))
    )
    sel.support = np.zeros(n_cols, dtype=bool)
    sel.support[np.argsort(-sel.scores, kind="stable")[:k]] = True
    sel.extra["auto_curve"] = (counts, values, label)
    ctx.log(f"  n_features auto: {k} columns (val {task.metric.name} of {label} on the top-k)")


def _facts(m: Any) -> dict[str, Any]:
    return {
        "val_metric": m.metric,
        "latency_ms_p50_batch_1": m.p50(),
        "size_bytes": m.size_bytes,
        "params": m.params,
    }
