from __future__ import annotations

import numpy as np
import onnx
import pytest
from torch import nn

from leanml.data import Split
from leanml.errors import ExportError
from leanml.models import MobileNet, Model
from leanml.runtime import OnnxRunner, check_parity, to_onnx
from leanml.training import predict


def test_mobilenet_exports_with_dynamic_batch_and_matches_torch(tmp_path):
    net = MobileNet(1, 10, width=0.5, depth=1).eval()
    x = np.random.default_rng(0).normal(size=(20, 1, 8, 8)).astype(np.float32)
    err = to_onnx(Model(torch=net), Split(x, None), tmp_path / "m.onnx")
    assert err is not None and err < 1e-3
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    out = OnnxRunner(tmp_path / "m.onnx").predict(x, batch_size=7)
    np.testing.assert_allclose(out, predict(net, x), rtol=1e-3, atol=1e-4)


def test_parity_check_rejects_a_mismatch():
    ref = np.ones((4, 3), np.float32)
    assert check_parity(ref, ref + 1e-6, what="t") < 1e-5
    with pytest.raises(ExportError, match="differ from the source model"):
        check_parity(ref, ref + 0.1, what="t")


def test_sklearn_model_exports_probabilities(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    est = LogisticRegression().fit(x, y)
    to_onnx(Model(sklearn=est), Split(x, y), tmp_path / "s.onnx")
    out = OnnxRunner(tmp_path / "s.onnx").predict(x)
    np.testing.assert_allclose(out, est.predict_proba(x), atol=1e-4)


def test_interrupted_export_leaves_nothing(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace")

    with pytest.raises(ExportError):
        to_onnx(
            Model(torch=Broken()), Split(np.zeros((2, 3), np.float32), None), tmp_path / "b.onnx"
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n_classes", [2, 3])
def test_hist_gradient_boosting_classifier_exports_with_missing_values(tmp_path, n_classes):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = make_classification(
        n_samples=400, n_features=6, n_informative=4, n_classes=n_classes, random_state=0
    )
    x = x.astype(np.float32)
    x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan  # learned NaN routing
    est = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
    nodes_before = [p.nodes.copy() for row in est._predictors for p in row]
    err = to_onnx(Model(sklearn=est), Split(x, y), tmp_path / "hgb.onnx")
    assert err is not None
    runner = OnnxRunner(tmp_path / "hgb.onnx")
    np.testing.assert_allclose(runner.predict(x), est.predict_proba(x), atol=1e-5)
    labels = OnnxRunner(tmp_path / "hgb.onnx", output="label").predict(x)
    np.testing.assert_array_equal(labels.ravel(), est.predict(x))
    # the user's model is left as it was
    after = [p.nodes for row in est._predictors for p in row]
    assert all(np.array_equal(a, b) for a, b in zip(nodes_before, after, strict=True))


def test_hist_gradient_boosting_regressor_exports(tmp_path):
    from sklearn.datasets import make_regression
    from sklearn.ensemble import HistGradientBoostingRegressor

    x, y = make_regression(n_samples=300, n_features=5, noise=1.0, random_state=0)
    x = x.astype(np.float32)
    x[::7, 2] = np.nan
    est = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(x, y)
    to_onnx(Model(sklearn=est), Split(x, y.astype(np.float32)), tmp_path / "hgb.onnx")
    got = OnnxRunner(tmp_path / "hgb.onnx").predict(x).ravel()
    np.testing.assert_allclose(got, est.predict(x), rtol=1e-4, atol=1e-3)


def test_tree_converter_is_restored_after_a_conversion(tmp_path):
    from skl2onnx.common import tree_ensemble
    from sklearn.ensemble import HistGradientBoostingClassifier

    original = tree_ensemble.add_node
    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    est = HistGradientBoostingClassifier(max_iter=3).fit(x, y)
    to_onnx(Model(sklearn=est), Split(x, y), tmp_path / "hgb.onnx")
    assert tree_ensemble.add_node is original
