"""Feature engineering baked into a scikit-learn model: new columns made from the kept ones.

The transforms are scikit-learn's (or, for ``log``, a one-line transformer with its own skl2onnx
converter), put together in one ``ColumnTransformer`` that runs after the column selection, so the
exported ONNX still takes the raw columns:

- ``log``: ``log1p`` of the skewed columns that are non-negative on the training split (negative
  values at predict time are clipped to 0 first);
- ``quantile``: ``QuantileTransformer`` (uniform output; skl2onnx converts only that) of the skewed
  columns ``log`` does not take;
- ``poly``: the degree-2 products (squares and pairwise interactions) of the top-``k`` kept columns by
  the stage's ranking, added next to the columns;
- ``bins``: ``KBinsDiscretizer`` one-hot (quantile bin edges) of the same top-``k`` columns, added.

Imported lazily by the features stage (it imports scikit-learn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ...runtime import sklearn_outputs
from ...task import Task
from .._base import StageContext
from ._config import ENGINEER_KINDS, FeaturesConfig
from ._select import Selection
from ._sklearn import ColumnSelect

_CONVERTER_REGISTERED = False


def _convert_log1p(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.algebra.onnx_ops import OnnxAdd, OnnxLog, OnnxMax
    from skl2onnx.common.data_types import guess_numpy_type

    opv = container.target_opset
    x = operator.inputs[0]
    dtype = guess_numpy_type(x.type)
    clipped = OnnxMax(x, np.array([0], dtype=dtype), op_version=opv)
    out = OnnxLog(
        OnnxAdd(clipped, np.array([1], dtype=dtype), op_version=opv),
        op_version=opv,
        output_names=operator.outputs[:1],
    )
    out.add_to(scope, container)


def _register_converter() -> None:
    global _CONVERTER_REGISTERED
    if _CONVERTER_REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.scaler import calculate_sklearn_scaler_output_shapes

    update_registered_converter(
        Log1p, "LeanmlLog1p", calculate_sklearn_scaler_output_shapes, _convert_log1p
    )
    _CONVERTER_REGISTERED = True


class Log1p(TransformerMixin, BaseEstimator):
    """``log1p(max(x, 0))`` column-wise; exported as Max, Add, Log."""

    def fit(self, x: Any, y: Any = None) -> Log1p:
        self.n_features_in_ = np.asarray(x).shape[1]
        _register_converter()
        return self

    def transform(self, x: Any) -> np.ndarray:
        return np.log1p(np.maximum(np.asarray(x), 0))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        _register_converter()


@dataclasses.dataclass
class EngineerPlan:
    """Which kept columns (positions among them) each transform takes, decided on the training split."""

    kinds: tuple[str, ...]
    log: list[int]
    quantile: list[int]
    top: list[int]  # for poly and bins


def skewed_columns(x: np.ndarray, threshold: float) -> tuple[list[int], list[int]]:
    """(non-negative skewed columns, other skewed columns): |sample skewness| above ``threshold``."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(0)
    sd = centred.std(0)
    skew = (centred**3).mean(0) / np.where(sd > 0, sd, 1.0) ** 3
    skewed = np.flatnonzero(np.abs(skew) > threshold)
    nonneg = [int(i) for i in skewed if x[:, i].min() >= 0]
    return nonneg, [int(i) for i in skewed if i not in set(nonneg)]


def plan(
    x: np.ndarray,
    kinds: tuple[str, ...],
    scores: np.ndarray,
    *,
    top_k: int,
    skew_threshold: float,
) -> EngineerPlan:
    """The columns each of ``kinds`` takes; ``scores`` rank the kept columns (higher = better)."""
    nonneg, other = skewed_columns(x, skew_threshold)
    log = nonneg if "log" in kinds else []
    quantile = ([] if "log" in kinds else nonneg) + other if "quantile" in kinds else []
    top = sorted(int(i) for i in np.argsort(-scores, kind="stable")[: min(top_k, x.shape[1])])
    return EngineerPlan(kinds=kinds, log=sorted(log), quantile=sorted(quantile), top=top)


def engineer_step(p: EngineerPlan, n_columns: int, *, n_bins: int, seed: int) -> Any:
    """An unfitted ``ColumnTransformer``: the columns (log/quantile applied), then the added ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import KBinsDiscretizer, PolynomialFeatures, QuantileTransformer

    changed = set(p.log) | set(p.quantile)
    parts: list[tuple[str, Any, list[int]]] = []
    rest = [i for i in range(n_columns) if i not in changed]
    if rest:
        parts.append(("keep", "passthrough", rest))
    if p.log:
        parts.append(("log", Log1p(), p.log))
    if p.quantile:
        parts.append(
            ("quantile", QuantileTransformer(n_quantiles=100, random_state=seed), p.quantile)
        )
    if "poly" in p.kinds and len(p.top) >= 1:
        k = len(p.top)
        # PolynomialFeatures repeats the k linear terms first; drop them, they are already kept
        degree2 = ColumnSelect(tuple(range(k, k + k * (k + 1) // 2)))
        poly = Pipeline(
            [("products", PolynomialFeatures(2, include_bias=False)), ("degree2", degree2)]
        )
        parts.append(("poly", poly, p.top))
    if "bins" in p.kinds:
        bins = KBinsDiscretizer(
            n_bins=n_bins,
            encode="onehot-dense",
            strategy="quantile",
            quantile_method="averaged_inverted_cdf",
        )
        parts.append(("bins", bins, p.top))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def describe(p: EngineerPlan, names: list[str]) -> list[str]:
    """One phrase per transform: what it did to which kept columns (``names`` of the kept columns)."""
    out = []
    for kind in p.kinds:
        cols = {"log": p.log, "quantile": p.quantile}.get(kind, p.top)
        shown = ", ".join(names[i] for i in cols) or "no skewed column"
        what = {
            "log": "log1p of",
            "quantile": "quantile transform of",
            "poly": "degree-2 products of",
            "bins": "one-hot bins of",
        }[kind]
        out.append(f"{what} {shown}")
    return out


# engineer: auto keeps a transform when its validation gain exceeds this many standard deviations of
# the gain under a paired bootstrap of the validation rows (one-sided 95%)
_NOISE_Z = 1.645
_BOOTSTRAP = 200


@dataclasses.dataclass
class AutoChoice:
    """What ``engineer: auto`` tried and kept: ``trials`` maps a tried set to its validation metric."""

    kinds: tuple[str, ...]
    baseline: float
    trials: dict[str, float]
    noise: dict[str, float]


def choose(
    outputs: Callable[[tuple[str, ...]], np.ndarray],
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_val: np.ndarray,
    *,
    higher_is_better: bool,
    seed: int,
) -> AutoChoice:
    """Greedy forward choice on the validation split.

    ``outputs(kinds)`` refits the model with ``kinds`` engineered and returns its validation outputs.
    Each round tries every remaining transform on top of the kept ones and keeps the best, if its gain
    over the current set exceeds the noise (a paired bootstrap of the validation rows); else stops.
    """
    sign = 1.0 if higher_is_better else -1.0
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, len(y_val), len(y_val)) for _ in range(_BOOTSTRAP)]
    kept: tuple[str, ...] = ()
    current = outputs(kept)
    baseline = float(metric(current, y_val))
    trials: dict[str, float] = {}
    noise: dict[str, float] = {}
    while True:
        best: tuple[float, tuple[str, ...], np.ndarray] | None = None
        for kind in [k for k in ENGINEER_KINDS if k not in kept]:
            kinds = tuple(k for k in ENGINEER_KINDS if k in (*kept, kind))
            out = outputs(kinds)
            value = float(metric(out, y_val))
            key = "+".join(kinds)
            trials[key] = value
            gain = sign * (value - float(metric(current, y_val)))
            diffs = [
                sign * (metric(out[b], y_val[b]) - metric(current[b], y_val[b])) for b in boots
            ]
            noise[key] = float(np.std(diffs))
            if gain > _NOISE_Z * noise[key] and gain > 0 and (best is None or gain > best[0]):
                best = (gain, kinds, out)
        if best is None:
            break
        _, kept, current = best
        if len(kept) == len(ENGINEER_KINDS):
            break
    return AutoChoice(kinds=kept, baseline=baseline, trials=trials, noise=noise)


def kept_scores(
    x: np.ndarray, y: np.ndarray, scores: np.ndarray | None, *, classification: bool
) -> np.ndarray:
    """The ranking of the kept columns: the selector's scores, else the univariate F statistic."""
    if scores is not None:
        return np.asarray(scores, dtype=np.float64)
    from sklearn.feature_selection import f_classif, f_regression

    f = (f_classif if classification else f_regression)(x, y)[0]
    return np.nan_to_num(np.asarray(f, dtype=np.float64))


class Builder:
    """Fitted steps behind the column selection for a set of engineering transforms (maybe none)."""

    def __init__(
        self,
        cfg: FeaturesConfig,
        x_sel: np.ndarray,
        y: np.ndarray,
        sel: Selection,
        idx: np.ndarray,
        classification: bool,
        seed: int,
    ) -> None:
        self.cfg, self.x_sel, self.y, self.seed = cfg, x_sel, y, seed
        self.idx = idx
        self.scores = None
        if cfg.engineer:
            ranked = None if sel.scores is None else np.asarray(sel.scores)[idx]
            self.scores = kept_scores(x_sel, y, ranked, classification=classification)

    def __call__(
        self, kinds: tuple[str, ...]
    ) -> tuple[list[tuple[str, Any]], list[float] | None, Any]:
        from ._sklearn import fit_transform_steps

        cfg, x = self.cfg, self.x_sel
        head: list[tuple[str, Any]] = []
        p = None
        if kinds:
            assert self.scores is not None
            p = plan(x, kinds, self.scores, top_k=cfg.poly_top_k, skew_threshold=cfg.skew_threshold)
            eng = engineer_step(p, x.shape[1], n_bins=cfg.n_bins, seed=self.seed).fit(x, self.y)
            head = [("engineer", eng)]
            x = np.asarray(eng.transform(x), dtype=np.float32)
        steps, explained = fit_transform_steps(
            x,
            cfg.transform,
            n_components=cfg.n_components,
            pca_variance=cfg.pca_variance,
            seed=self.seed,
        )
        return head + steps, explained, p


def engineer_kinds(
    cfg: FeaturesConfig,
    build: Builder,
    base: Any,
    task: Task,
    ctx: StageContext,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[tuple[str, ...], Any]:
    """The transforms to engineer: the recipe's list, or for ``auto`` the ones that help on val."""
    if cfg.engineer != "auto":
        return tuple(k for k in ENGINEER_KINDS if k in cfg.engineer), None
    from ._sklearn import sklearn_pipeline

    x_tr, y_tr, x_va, y_va = arrays
    n_cols = x_tr.shape[1]

    def outputs(kinds: tuple[str, ...]) -> np.ndarray:
        steps, _, _ = build(kinds)
        pipe = sklearn_pipeline(build.idx, n_cols, steps, base).fit(x_tr, y_tr)
        return sklearn_outputs(pipe, x_va)

    ctx.log("  engineer auto: trying each transform on the val split")
    choice = choose(
        outputs,
        task.metric,
        y_va,
        higher_is_better=task.metric.higher_is_better,
        seed=ctx.seed,
    )
    return choice.kinds, choice


def report_engineering(
    notes: list[str],
    details: dict[str, Any],
    p: Any,
    choice: Any,
    selected: list[str],
    metric: str,
) -> None:
    details["engineer"] = list(p.kinds) if p is not None else []
    if choice is not None:
        details["engineer_auto"] = {
            "baseline_val_metric": choice.baseline,
            "trials_val_metric": choice.trials,
            "bootstrap_sd_of_gain": choice.noise,
        }
        tried = ", ".join(f"{k} {v:.4f}" for k, v in choice.trials.items())
        kept = "+".join(choice.kinds) or "none"
        notes.append(
            f"engineer auto kept {kept}: val {metric} without engineering {choice.baseline:.4f}; tried "
            f"{tried} (a transform is kept when its gain exceeds 1.645 bootstrap SDs)"
        )
    if p is not None:
        notes.append("engineered (after selection): " + "; ".join(describe(p, selected)))
