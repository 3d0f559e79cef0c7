from __future__ import annotations

import numpy as np
import pytest

from leanml.errors import InvalidInputError
from leanml.metrics import get_metric, mask_padding


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


def _token_outputs(n: int = 6, seq: int = 10, hidden: int = 8):
    """Token-level outputs and inputs whose sample i has 3 + i real tokens, then padding."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((n, seq, hidden))
    mask = (np.arange(seq) < 3 + np.arange(n)[:, None]).astype(np.int64)
    return ref, {"input_ids": rng.integers(1, 50, (n, seq)), "attention_mask": mask}


def test_cosine_and_agreement_ignore_padding_outputs_changed_arbitrarily():
    ref, x = _token_outputs()
    targets = mask_padding(ref, x)
    pad = x["attention_mask"] == 0
    out = ref.copy()
    out[pad] = np.random.default_rng(1).standard_normal((pad.sum(), ref.shape[-1])) * 100
    assert get_metric("cosine")(out, targets) == pytest.approx(1.0)
    assert get_metric("agreement")(out, targets) == 1.0
    assert get_metric("cosine")(out, ref) < 0.9  # without the mask the padding counts
    # Regression metrics take the targets' plain values: the mask is for fidelity metrics only.
    assert get_metric("mse")(out, targets) == get_metric("mse")(out, ref)


def test_a_changed_real_token_counts_once_in_its_own_sample():
    ref, x = _token_outputs()
    targets = mask_padding(ref, x)
    out = ref.copy()
    out[0, 0] = -out[0, 0]  # sample 0 has 3 real tokens: its mean cosine is (1 + 1 - 1) / 3
    assert get_metric("cosine")(out, targets) == pytest.approx((5 + 1 / 3) / 6)
    assert get_metric("agreement")(out, targets) == pytest.approx((5 + 2 / 3) / 6)


def test_only_token_outputs_of_a_model_with_an_attention_mask_are_masked():
    ref, x = _token_outputs()
    assert mask_padding(ref, x["input_ids"]) is ref  # no attention_mask input
    pooled = ref.mean(1)
    assert mask_padding(pooled, x) is pooled  # one vector per sample: nothing to mask
    x["attention_mask"][2] = 0  # a sample with no real token counts at every position
    masked = mask_padding(ref, x)
    assert not np.ma.getmaskarray(masked)[2].any() and np.ma.getmaskarray(masked)[0].any()
