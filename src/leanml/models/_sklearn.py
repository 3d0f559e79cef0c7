"""scikit-learn estimators as leanml models (``task.model: sklearn:LogisticRegression``)."""

from __future__ import annotations

from typing import Any

from .._utils import DEFAULT_SEED
from ..errors import InvalidInputError


def sklearn_estimator_names() -> list[str]:
    from sklearn.utils import all_estimators

    return sorted(name for name, _ in all_estimators(type_filter=["classifier", "regressor"]))


def build_sklearn(
    spec: str, model_args: dict[str, Any] | None = None, *, seed: int = DEFAULT_SEED
) -> Any:
    """An unfitted estimator from ``sklearn:Name`` and keyword arguments (random_state seeded)."""
    from sklearn.utils import all_estimators

    name = spec.split(":", 1)[1]
    classes = dict(all_estimators(type_filter=["classifier", "regressor"]))
    if name not in classes:
        close = [n for n in classes if name.lower() in n.lower()][:5]
        raise InvalidInputError(
            f"task.model {spec!r}: scikit-learn has no classifier or regressor named {name!r}"
            + (f"; did you mean {close}?" if close else "; e.g. sklearn:LogisticRegression")
        )
    cls = classes[name]
    args = dict(model_args or {})
    try:
        est = cls(**args)
    except TypeError as e:
        raise InvalidInputError(f"task.model_args {args} rejected by {name}: {e}") from None
    if "random_state" in est.get_params() and "random_state" not in args:
        est.set_params(random_state=seed)
    return est
