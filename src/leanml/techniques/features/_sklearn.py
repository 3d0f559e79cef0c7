"""Feature selection baked into a scikit-learn model: the exported ONNX takes the raw columns.

The model becomes a ``Pipeline`` of :class:`ColumnSelect` (fixed column indices), an optional
``StandardScaler``/``PCA``, and the estimator; skl2onnx converts all of it. Imported lazily (it
imports scikit-learn), by the features stage when it runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin

_CONVERTER_REGISTERED = False


def _register_converter() -> None:
    """Teach skl2onnx that :class:`ColumnSelect` converts like its own feature selectors (a Gather)."""
    global _CONVERTER_REGISTERED
    if _CONVERTER_REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.feature_selection import convert_sklearn_feature_selection
    from skl2onnx.shape_calculators.feature_selection import calculate_sklearn_select

    update_registered_converter(
        ColumnSelect,
        "LeanmlColumnSelect",
        calculate_sklearn_select,
        convert_sklearn_feature_selection,
        parser=_parse_select,
    )
    _CONVERTER_REGISTERED = True


def _parse_select(scope: Any, model: Any, inputs: list[Any], custom_parsers: Any = None) -> Any:
    """Declare the output's width at parse time: a ColumnTransformer behind it (feature engineering)
    picks its columns from that shape before any shape calculator runs."""
    op = scope.declare_local_operator("LeanmlColumnSelect", model)
    op.inputs = inputs
    width = len(model.indices)
    out = scope.declare_local_variable("selected", inputs[0].type.__class__([None, width]))
    op.outputs.append(out)
    return op.outputs


class ColumnSelect(SelectorMixin, BaseEstimator):
    """Keep the columns at fixed ``indices`` (in the order of the input), whatever selector chose them.

    One class for every selector (including the correlation filter, which scikit-learn lacks), so the
    exported graph is always one ArrayFeatureExtractor over the original columns.
    """

    def __init__(self, indices: tuple[int, ...] = ()) -> None:
        self.indices = indices

    def fit(self, x: Any, y: Any = None) -> ColumnSelect:
        n = np.asarray(x).shape[1]
        idx = np.asarray(self.indices, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"ColumnSelect indices must be in [0, {n}); got {list(self.indices)}")
        self.n_features_in_ = n
        _register_converter()
        return self

    def _get_support_mask(self) -> np.ndarray:
        mask = np.zeros(self.n_features_in_, dtype=bool)
        mask[list(self.indices)] = True
        return mask

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        _register_converter()


def fit_transform_steps(
    x_selected: np.ndarray,
    transform: str,
    *,
    n_components: int | None,
    pca_variance: float,
    seed: int,
) -> tuple[list[tuple[str, Any]], list[float] | None]:
    """Fitted scikit-learn steps for ``transform`` (``none``, ``standardize`` or ``pca``).

    PCA runs on standardized columns, so a column's unit does not decide how much variance it carries.

    Returns:
        the steps, and for PCA the cumulative explained-variance ratio of every component (for the plot).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if transform == "none":
        return [], None
    scaler = StandardScaler().fit(x_selected)
    if transform == "standardize":
        return [("scale", scaler)], None
    z = scaler.transform(x_selected)
    full = PCA(svd_solver="full").fit(z)
    cumulative = np.cumsum(full.explained_variance_ratio_)
    if n_components is not None:
        k = min(n_components, len(cumulative))
    else:
        k = int(np.searchsorted(cumulative, pca_variance - 1e-9) + 1)
        k = min(k, len(cumulative))
    pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit(z)
    return [("scale", scaler), ("pca", pca)], [float(c) for c in cumulative]


def sklearn_pipeline(
    indices: np.ndarray, n_columns: int, steps: list[tuple[str, Any]], estimator: Any
) -> Any:
    """An unfitted-estimator ``Pipeline`` taking the original columns: select, transform, estimate."""
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    front: list[tuple[str, Any]] = []
    if len(indices) < n_columns:
        front.append(("select", ColumnSelect(tuple(int(i) for i in indices))))
    return Pipeline(
        [*front, *[(name, clone(step)) for name, step in steps], ("estimator", clone(estimator))]
    )


def final_estimator(est: Any) -> Any:
    """The estimator at the end of a pipeline a previous features stage built (or ``est`` itself)."""
    from sklearn.pipeline import Pipeline

    while isinstance(est, Pipeline):
        est = est.steps[-1][1]
    return est
