from __future__ import annotations

import numpy as np
import pytest

from leanml.errors import InvalidInputError
from leanml.metrics import get_metric


def test_values_on_hand_computed_cases():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 1, 1, 1])
    assert get_metric("accuracy")(logits, y) == 0.75
    assert get_metric("f1")(logits, y) == pytest.approx((2 / 3 + 0.8) / 2)
    out, t = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0])
    assert get_metric("mse")(out, t) == pytest.approx(4 / 3)
    assert get_metric("mae")(out, t) == pytest.approx(2 / 3)
    assert get_metric("r2")(t, t) == 1.0
    assert get_metric("agreement")(logits, logits[[0, 1, 3, 3]]) == 0.75
    assert get_metric("cosine")(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])) == pytest.approx(
        2**-0.5
    )


def test_drop_follows_the_direction():
    assert get_metric("accuracy").drop(0.9, 0.85) == pytest.approx(0.05)
    assert get_metric("mse").drop(1.0, 1.2) == pytest.approx(0.2)
    assert get_metric("mse").drop(1.0, 0.8) < 0


def test_unknown_metric():
    with pytest.raises(InvalidInputError, match="use one of accuracy"):
        get_metric("auc")
