"""Which columns a tabular model keeps: scikit-learn's selectors, plus a correlation filter.

Every selector is fit on the training split only and returns a :class:`Selection`: a mask over the
original columns (in their original order) and, where the selector ranks columns, a score per column
so a metric-vs-number-of-features curve can be drawn from nested top-k subsets.

Selectors that rank by a model (``importance``, ``rfe``, ``rfecv``) use the task's scikit-learn
estimator when it exposes ``coef_`` or ``feature_importances_``, else a small gradient-boosted proxy,
which sees non-linear signal a linear model misses; a linear proxy (LogisticRegression / Ridge) only
when asked (``estimator: linear``), and ``estimator: permutation`` ranks by the task model's own
permutation importance on the validation split. Columns are standardized in front
of the ranking model, so a linear model's coefficients compare columns and not their units.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ...errors import InvalidInputError

SELECTORS = ("none", "variance", "correlation", "mutual_info", "importance", "rfe", "rfecv")
# Selectors that keep a count of columns (n_features); the others keep what passes a threshold.
COUNTED = ("mutual_info", "importance", "rfe", "rfecv")

# The task metric as a scikit-learn scorer, for RFECV's cross-validation.
_SCORERS = {
    "accuracy": "accuracy",
    "f1": "f1_macro",
    "mse": "neg_mean_squared_error",
    "mae": "neg_mean_absolute_error",
    "r2": "r2",
}


@dataclass
class Selection:
    """The columns a selector kept.

    Attributes:
        support: boolean mask over the original columns.
        method: the selector's name.
        estimator: the model that ranked the columns (e.g. ``LogisticRegression (proxy)``), if any.
        scores: one score per original column, higher = more useful, when the selector ranks columns.
        cv_curve: for ``rfecv``: (numbers of features, mean cross-validated score).
        seconds: wall time of the fit.
    """

    support: np.ndarray
    method: str
    estimator: str | None = None
    scores: np.ndarray | None = None
    cv_curve: tuple[list[int], list[float]] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def indices(self) -> np.ndarray:
        return np.flatnonzero(self.support)


def resolve_count(
    n_features: float | str | None, n_columns: int, *, where: str = "features.n_features"
) -> int | None:
    """``n_features`` as a number of columns: an int as is, a float as a fraction of the columns
    (None for ``auto`` and for no count: the caller decides)."""
    if n_features is None or n_features == "auto":
        return None
    if isinstance(n_features, float):
        return max(1, round(n_features * n_columns))
    if n_features > n_columns:
        raise InvalidInputError(
            f"{where} is {n_features} but the data has only {n_columns} columns; give at most "
            f"{n_columns}, or a fraction such as 0.5"
        )
    return int(n_features)


def permutation_scores(
    score: Callable[[np.ndarray], float], x_val: np.ndarray, *, seed: int, repeats: int = 3
) -> np.ndarray:
    """How much ``score`` (higher = better) falls when each column of ``x_val`` is shuffled, averaged
    over ``repeats`` shuffles: the trained model's own permutation importance on validation data."""
    rng = np.random.default_rng(seed)
    base = score(x_val)
    out = np.zeros(x_val.shape[1])
    for j in range(x_val.shape[1]):
        drops = []
        for _ in range(repeats):
            xp = x_val.copy()
            xp[:, j] = xp[rng.permutation(len(xp)), j]
            drops.append(base - score(xp))
        out[j] = float(np.mean(drops))
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """A mask of the ``k`` highest scores (ties broken by column order)."""
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


def exposes_importances(estimator: Any) -> bool:
    """Whether a fitted estimator ranks its inputs (``coef_`` or ``feature_importances_``)."""
    return hasattr(estimator, "coef_") or hasattr(estimator, "feature_importances_")


def ranking_estimator(
    choice: str, base: Any, *, classification: bool, seed: int
) -> tuple[Any, str, str]:
    """The estimator that ranks columns, its importance getter, and a label for the report.

    Args:
        choice: ``auto`` (the task's estimator if it exposes importances, else ``gbm``), ``model``,
            ``linear`` or ``gbm``.
        base: the task's fitted scikit-learn estimator, or None for a torch model.
    """
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if choice == "model" or (choice == "auto" and base is not None and exposes_importances(base)):
        if base is None or not exposes_importances(base):
            what = "a PyTorch model" if base is None else type(base).__name__
            raise InvalidInputError(
                f"features.estimator 'model' needs a model exposing coef_ or feature_importances_; "
                f"{what} does not: use estimator auto, linear or gbm"
            )
        est, label = clone(base), type(base).__name__
        attr = "coef_" if hasattr(base, "coef_") else "feature_importances_"
    elif choice in ("gbm", "auto", "permutation"):
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

        cls = GradientBoostingClassifier if classification else GradientBoostingRegressor
        est, label = cls(n_estimators=50, max_depth=3, random_state=seed), f"{cls.__name__} (proxy)"
        attr = "feature_importances_"
    else:
        from sklearn.linear_model import LogisticRegression, Ridge

        est = LogisticRegression(max_iter=2000) if classification else Ridge(alpha=1.0)
        label, attr = f"{type(est).__name__} (proxy)", "coef_"
    return (
        Pipeline([("scale", StandardScaler()), ("estimator", est)]),
        f"named_steps.estimator.{attr}",
        label,
    )


def correlation_support(x: np.ndarray, threshold: float) -> np.ndarray:
    """Keep columns in order, dropping any whose |Pearson correlation| with a kept one exceeds ``threshold``.

    Of each highly correlated pair the earlier column stays, so the result does not depend on a
    random tie-break. Constant columns correlate with nothing (their correlation is undefined).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x.astype(np.float64), rowvar=False)
    corr = np.nan_to_num(np.abs(np.atleast_2d(corr)), nan=0.0)
    keep: list[int] = []
    for j in range(x.shape[1]):
        if all(corr[j, k] <= threshold for k in keep):
            keep.append(j)
    mask = np.zeros(x.shape[1], dtype=bool)
    mask[keep] = True
    return mask


def _importances(fitted_pipeline: Any, getter: str, n: int) -> np.ndarray:
    from operator import attrgetter

    values = np.asarray(attrgetter(getter)(fitted_pipeline), dtype=np.float64)
    if values.ndim > 1:
        values = np.abs(values).sum(0)
    return np.abs(values).reshape(n)


def _rank_scores(
    ranking: np.ndarray, importances_of_kept: np.ndarray, support: np.ndarray
) -> np.ndarray:
    """Scores from an elimination ranking (1 = kept), kept columns ordered by the final model's importances."""
    scores = -ranking.astype(np.float64)
    kept = np.flatnonzero(support)
    if len(kept):
        imp = importances_of_kept / (importances_of_kept.max() + 1e-12)
        scores[kept] += 0.5 * imp  # stays within the rank-1 band, above every eliminated column
    return scores


def select_columns(
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: str,
    n_features: int | None,
    base: Any,
    estimator: str,
    classification: bool,
    metric: str,
    variance_threshold: float,
    permutation_score: Callable[[np.ndarray], float] | None = None,
    x_val: np.ndarray | None = None,
    correlation_threshold: float,
    step: float,
    cv: int,
    seed: int,
) -> Selection:
    """Fit the selector ``method`` on ``(x, y)`` and return the columns it keeps.

    Raises:
        InvalidInputError: the settings leave no column (e.g. a variance threshold above every column's).
    """
    from sklearn.feature_selection import (
        RFE,
        RFECV,
        SelectFromModel,
        SelectKBest,
        VarianceThreshold,
        mutual_info_classif,
        mutual_info_regression,
    )
    from sklearn.model_selection import KFold, StratifiedKFold

    n_cols = x.shape[1]
    t0 = time.perf_counter()
    if method == "none":
        sel = Selection(np.ones(n_cols, dtype=bool), method)
    elif method == "variance":
        variances = x.astype(np.float64).var(0)
        if not (variances > variance_threshold).any():
            raise InvalidInputError(
                f"features.variance_threshold {variance_threshold} is at or above every column's variance "
                f"(largest {variances.max():.4g}); lower it"
            )
        vt = VarianceThreshold(threshold=variance_threshold).fit(x)
        sel = Selection(vt.get_support(), method, scores=vt.variances_.astype(np.float64))
    elif method == "correlation":
        sel = Selection(correlation_support(x, correlation_threshold), method)
    elif method == "mutual_info":
        score_fn = mutual_info_classif if classification else mutual_info_regression
        # Integer-valued columns with few levels (one-hot, counts, flags) are discrete: the k-NN estimator
        # of continuous mutual information is biased on their ties.
        discrete = np.array(
            [len(np.unique(c)) <= 20 and bool(np.all(c == np.round(c))) for c in x.T]
        )
        score = partial(score_fn, discrete_features=discrete, random_state=seed)
        kb = SelectKBest(score, k=n_features or max(1, n_cols // 2)).fit(x, y)
        sel = Selection(
            kb.get_support(), method, scores=np.nan_to_num(kb.scores_.astype(np.float64))
        )
    elif estimator == "permutation" and method in ("importance", "rfe"):
        # the task model is trained once; its permutation importance ranks every column in one pass
        assert permutation_score is not None and x_val is not None
        scores = permutation_scores(permutation_score, x_val, seed=seed)
        k = n_features or max(1, n_cols // 2)
        sel = Selection(
            top_k(scores, k), method, "the model's permutation importance (val)", scores
        )
    else:
        est, getter, label = ranking_estimator(
            estimator, base, classification=classification, seed=seed
        )
        k = n_features or max(1, n_cols // 2)
        if method == "importance":
            sfm = SelectFromModel(
                est, max_features=k, threshold=-np.inf, importance_getter=getter
            ).fit(x, y)
            scores = _importances(sfm.estimator_, getter, n_cols)
            sel = Selection(sfm.get_support(), method, label, scores)
        elif method == "rfe":
            rfe = RFE(est, n_features_to_select=k, step=step, importance_getter=getter).fit(x, y)
            imp = _importances(rfe.estimator_, getter, int(rfe.support_.sum()))
            sel = Selection(
                rfe.support_.copy(), method, label, _rank_scores(rfe.ranking_, imp, rfe.support_)
            )
        else:  # rfecv
            folds = (StratifiedKFold if classification else KFold)(
                n_splits=cv, shuffle=True, random_state=seed
            )
            rfecv = RFECV(
                est,
                step=step,
                cv=folds,
                scoring=_SCORERS.get(metric),
                min_features_to_select=n_features or 1,
                importance_getter=getter,
            ).fit(x, y)
            imp = _importances(rfecv.estimator_, getter, int(rfecv.support_.sum()))
            res = rfecv.cv_results_
            counts = [int(c) for c in res["n_features"]]
            means = [float(v) for v in res["mean_test_score"]]
            if metric in ("mse", "mae"):
                means = [-v for v in means]  # scikit-learn maximises the negated error
            sel = Selection(
                rfecv.support_.copy(),
                method,
                label,
                _rank_scores(rfecv.ranking_, imp, rfecv.support_),
                (counts, means),
            )
    sel.seconds = time.perf_counter() - t0
    if not sel.support.any():
        raise InvalidInputError(f"features.select {method!r} kept no column; loosen its threshold")
    return sel
