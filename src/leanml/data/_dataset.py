"""The arrays a task trains, validates and tests on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError

Inputs = np.ndarray | dict[str, np.ndarray]


def n_rows(x: Inputs) -> int:
    """Number of samples in ``x`` (an array, or a dict of arrays named after model inputs)."""
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    return len(x)


def take(x: Inputs, index: np.ndarray | slice) -> Inputs:
    """Rows ``index`` of ``x``, keeping its form."""
    if isinstance(x, dict):
        return {k: v[index] for k, v in x.items()}
    return x[index]


@dataclass
class Split:
    """One split of a dataset: inputs ``x`` and targets ``y`` (None for unlabelled data)."""

    x: Inputs
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return n_rows(self.x)

    def head(self, n: int) -> Split:
        """The first ``n`` rows."""
        return Split(take(self.x, slice(0, n)), None if self.y is None else self.y[:n])


@dataclass
class Dataset:
    """Train/val/test splits and what is known about them.

    Attributes:
        name: where the data came from, e.g. ``digits`` or ``csv:data/houses.csv``.
        kind: ``image``, ``tabular`` or ``other``; stages that only apply to one kind check it.
        train, val, test: the splits; ``val`` drives early stopping and stage decisions, ``test``
            is only used to report the metric of each stage.
        feature_names: column names for tabular data, in the order the model takes them.
        n_classes: for classification targets; None for regression or fidelity targets.
    """

    name: str
    kind: str
    train: Split
    val: Split
    test: Split
    feature_names: list[str] | None = None
    n_classes: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch axis); for dict inputs, of the first input."""
        x = self.train.x
        if isinstance(x, dict):
            x = next(iter(x.values()))
        return tuple(int(d) for d in x.shape[1:])

    @property
    def labelled(self) -> bool:
        return self.train.y is not None


# Integer targets with at most this many distinct values, each on this many rows on average, read
# as class labels: a regression metric on them trains a one-output regressor on category codes.
MAX_LABEL_VALUES = 20
MIN_ROWS_PER_LABEL = 5


def check_regression_targets(data: Dataset, metric: str) -> None:
    """Refuse a regression metric (mse, mae, r2) on targets that look like class labels.

    Targets look like class labels when the dataset is a classification dataset (the built-ins), or
    when they are integers with at most ``MAX_LABEL_VALUES`` distinct values and at least
    ``MIN_ROWS_PER_LABEL`` rows per value on average, unless they were given as floats (a float
    array, or CSV values written like ``3.0``): that is how a count or score says it is a number.

    Raises:
        InvalidInputError: the targets look like class labels; the message says why and the fix.
    """
    ys = [s.y for s in (data.train, data.val, data.test) if s.y is not None]
    if not ys or ys[0].ndim != 1 or not np.issubdtype(ys[0].dtype, np.integer):
        return
    if data.extra.get("float_targets"):
        return
    y = np.concatenate(ys)
    distinct = len(np.unique(y))
    fix = (
        "use task.metric accuracy or f1 for classes; for a numeric target such as a count, give "
        "the values as floats (write 3.0 in the CSV, or save y as a float array)"
    )
    if data.extra.get("class_labels"):
        raise InvalidInputError(
            f"task.metric {metric!r} is a regression metric, but data {data.name!r} is a "
            f"classification dataset ({distinct} classes, integer labels); {fix.split(';')[0]}"
        )
    if distinct <= MAX_LABEL_VALUES and distinct * MIN_ROWS_PER_LABEL <= len(y):
        raise InvalidInputError(
            f"task.metric {metric!r} is a regression metric, but data {data.name!r} has integer "
            f"targets with only {distinct} distinct values over {len(y)} rows, which look like "
            f"class labels (integers with at most {MAX_LABEL_VALUES} distinct values do); {fix}"
        )


def check_finite(name: str, x: Inputs, *, what: str | None = None) -> None:
    """Raise when a float array holds NaN or inf: training on them silently produces garbage.

    Args:
        name: the data's name, e.g. ``npz:d.npz``.
        x: an array, or a dict of arrays (each named by its key in the message).
        what: how the message names an array ``x`` (default ``array 'x'``), e.g. the targets.
    """
    arrays = x.items() if isinstance(x, dict) else [("x", x)]
    for key, a in arrays:
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            label = what if (what and not isinstance(x, dict)) else f"array '{key}'"
            raise InvalidInputError(
                f"{name}: {label} holds {bad} NaN/inf values; data must be finite "
                "(drop or impute those rows first)"
            )


def split_arrays(
    x: Inputs,
    y: np.ndarray | None,
    *,
    val: float,
    test: float,
    seed: int,
    stratify: bool,
    name: str = "data",
) -> tuple[Split, Split, Split]:
    """Shuffle and split arrays into train/val/test by fractions (stratified for class labels).

    Raises:
        InvalidInputError: there are too few rows, or too few of some class, to put rows (of every
            class, when stratified) in each split.
    """
    from sklearn.model_selection import train_test_split

    n = n_rows(x)
    index = np.arange(n)
    strat = y if (stratify and y is not None) else None
    try:
        rest, test_idx = train_test_split(index, test_size=test, random_state=seed, stratify=strat)
        strat_rest = None if strat is None else strat[rest]
        val_frac = val / (1.0 - test)
        train_idx, val_idx = train_test_split(
            rest, test_size=val_frac, random_state=seed, stratify=strat_rest
        )
    except ValueError as e:
        raise InvalidInputError(
            cannot_split_message(name, n, strat, f"val {val:g}, test {test:g}", e)
        ) from None

    def part(idx: np.ndarray) -> Split:
        return Split(take(x, idx), None if y is None else y[idx])

    return part(train_idx), part(val_idx), part(test_idx)


def cannot_split_message(
    name: str, n: int, labels: np.ndarray | None, fractions: str, error: Exception
) -> str:
    """The one-line error for data scikit-learn's ``train_test_split`` refused to split.

    Args:
        name: the data's name, e.g. ``npz:data.npz``.
        n: the number of rows to split.
        labels: the class labels the split was stratified by, or None.
        fractions: the split fractions, as the message shows them.
        error: the ValueError ``train_test_split`` raised.
    """
    if labels is None:
        reason = str(error).split(". ")[0].rstrip(".")
        return (
            f"{name}: {n} rows cannot be split into train/val/test ({fractions}): {reason}; "
            "give more rows"
        )
    classes, counts = np.unique(labels, return_counts=True)
    fewest = np.argsort(counts, kind="stable")[:5]
    shown = ", ".join(f"class {classes[i]}: {counts[i]}" for i in fewest)
    of = f", the 5 smallest of {len(classes)} classes" if len(classes) > 5 else ""
    return (
        f"{name}: {n} rows cannot be split into train/val/test ({fractions}) with every class in "
        f"each split; rows per class (fewest first{of}): {shown}; every class needs at least 3 rows, and val and test need at "
        "least one row per class: add rows of the rare classes, drop or merge them, or, with "
        "many classes, give more rows or larger val/test fractions"
    )
