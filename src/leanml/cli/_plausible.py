"""A one-line warning when a model's "before" metric looks implausible for its data."""

from __future__ import annotations

import sys

import numpy as np

#: How far above chance level (1 / n_classes, absolute) an accuracy must be to pass unremarked.
CHANCE_MARGIN = 0.1
#: How far below the score the user expects (``--expect``, absolute) a "before" metric may fall.
EXPECT_MARGIN = 0.05


def chance_warning(metric: str, value: float, y: np.ndarray | None) -> str | None:
    """The warning for an accuracy within :data:`CHANCE_MARGIN` of (or below) chance level.

    Args:
        metric: the metric's name; only ``accuracy`` on integer class labels is checked.
        value: the model's score on the samples ``y`` labels.
        y: the class labels the model was scored on (None: unlabelled, nothing to check).

    Returns:
        The message, or None when the score is plausible (or cannot be judged).
    """
    if metric != "accuracy" or y is None or not len(y) or not np.issubdtype(y.dtype, np.integer):
        return None
    n_classes = max(int(y.max()) + 1, len(np.unique(y)))
    if n_classes < 2:
        return None
    chance = 1.0 / n_classes
    if value >= chance + CHANCE_MARGIN:
        return None
    where = "below" if value < chance else "near"
    return (
        f"leanml: warning: the model scores {metric} {value:.4f} on these samples, {where} what "
        f"guessing scores ({chance:.2f} for {n_classes} classes); check the data is scaled as the "
        "model was trained (built-in digits are pixel values / 16, in [0, 1]) and the labels are "
        "the model's classes"
    )


def expectation_warning(
    metric: str, value: float, expect: float | None, *, higher_is_better: bool
) -> str | None:
    """The warning when the model scores far from what the user says it scored (``--expect``)."""
    if expect is None:
        return None
    gap = expect - value if higher_is_better else value - expect
    if gap <= EXPECT_MARGIN:
        return None
    return (
        f"leanml: warning: the model scores {metric} {value:.4f} on these samples, {abs(gap):.4f} "
        f"{'below' if higher_is_better else 'above'} the {expect:g} you expect (--expect); check "
        "the data is scaled and laid out as the model was trained (built-in digits are pixel "
        "values / 16, in [0, 1]) and the labels are the model's classes"
    )


def warn_if_implausible(
    metric: str,
    value: float,
    y: np.ndarray | None,
    *,
    expect: float | None = None,
    higher_is_better: bool = True,
) -> None:
    """Print one line on stderr when the "before" metric is near chance level or far from what
    the user expects (the expectation, when given, is the sharper test)."""
    message = expectation_warning(
        metric, value, expect, higher_is_better=higher_is_better
    ) or chance_warning(metric, value, y)
    if message:
        print(message, file=sys.stderr)
