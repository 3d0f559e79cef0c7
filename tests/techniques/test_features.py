"""The features stage: each selector, the baked-in export, scikit-learn models, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from typer.testing import CliRunner

import leanml
from leanml.errors import InvalidInputError
from leanml.runtime import OnnxRunner
from leanml.training import predict

from ..conftest import FAST_MEASURE

INFORMATIVE = set(range(5))  # make_classification(shuffle=False) puts the informative columns first


def _informative(n_features: int = 20, n_samples: int = 600) -> tuple[np.ndarray, np.ndarray]:
    return make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=5,
        n_redundant=0,
        n_repeated=0,
        shuffle=False,
        random_state=0,
    )


def _kept(details: dict) -> set[int]:
    return {int(name[1:]) for name in details["selected_features"]}


def _onnx_columns(path: Path) -> int:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return dims[1].dim_value


def _check_baked_in(
    path: Path, x: np.ndarray, reference: np.ndarray, dropped: list[int], kept: list[int]
) -> None:
    """ONNX Runtime on raw rows equals the Python model; the dropped columns do not matter, kept ones do."""
    runner = OnnxRunner(path)
    got = runner.predict(x)
    np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-4)
    noisy = x.copy()
    noisy[:, dropped] = np.random.default_rng(0).normal(0, 100, size=(len(x), len(dropped)))
    np.testing.assert_allclose(runner.predict(noisy), got, rtol=1e-5, atol=1e-6)
    moved = x.copy()
    moved[:, kept] += 10 * x[:, kept].std(0)
    assert not np.allclose(runner.predict(moved), got)


@pytest.mark.parametrize(
    ("select", "n_features", "options"),
    [
        ("mutual_info", 5, {}),
        ("importance", 5, {}),
        ("importance", 5, {"estimator": "gbm"}),
        ("rfe", 5, {"step": 2}),
        ("rfecv", None, {"step": 2, "cv": 3}),
    ],
)
def test_ranking_selectors_keep_the_informative_columns(select, n_features, options):
    x, y = _informative()
    out = leanml.select_features(
        LogisticRegression(max_iter=2000),
        data=(x, y),
        select=select,
        n_features=n_features,
        measure=FAST_MEASURE,
        curve_points=4,
        **options,
    )
    d = out.result.details
    assert d["selector"] == select and d["n_features_in"] == 20
    assert (
        len(d["selected_features"])
        == d["n_features_selected"]
        == len(out.model.sklearn.named_steps["select"].indices)
    )
    assert len(_kept(d) & INFORMATIVE) >= 4, d["selected_features"]
    if n_features is not None:
        assert d["n_features_selected"] == n_features
    assert d["metric_curve"]["n_features"][-1] == 20
    assert any("features" in p.xlabel for p in out.result.plots)
    assert out.after.metric >= out.before.metric - 0.03


def test_variance_drops_constant_columns():
    x, y = _informative(n_features=10)
    x = np.concatenate(
        [x, np.full((len(x), 2), 3.0), x[:, :1] * 0 + 1.0], axis=1
    )  # columns 10..12 constant
    out = leanml.select_features(
        LogisticRegression(max_iter=2000), data=(x, y), select="variance", measure=FAST_MEASURE
    )
    assert _kept(out.result.details) == set(range(10))
    assert out.result.details["dropped_features"] == ["x10", "x11", "x12"]


def test_a_selector_that_keeps_every_column_leaves_the_model_unchanged():
    x, y = _informative(n_features=6)
    est = LogisticRegression(max_iter=2000).fit(x[:300], y[:300])
    out = leanml.select_features(est, data=(x, y), select="variance", measure=FAST_MEASURE)
    assert out.model.sklearn is not est and out.model.sklearn.coef_.tolist() == est.coef_.tolist()
    assert "unchanged" in out.result.notes[0] and out.result.details["dropped_features"] == []


def test_correlation_drops_the_later_of_each_correlated_pair():
    x, y = _informative(n_features=8)
    rng = np.random.default_rng(0)
    twins = x[:, [0, 3]] * 2.0 + rng.normal(0, 0.01, size=(len(x), 2))  # columns 8, 9 copy 0 and 3
    out = leanml.select_features(
        LogisticRegression(max_iter=2000),
        data=(np.concatenate([x, twins], axis=1), y),
        select="correlation",
        correlation_threshold=0.9,
        measure=FAST_MEASURE,
    )
    assert _kept(out.result.details) == set(range(8))


def test_rfe_done_when_keeps_informative_and_the_metric(tmp_path):
    """make_classification, 5 informative of 40: rfe to 8 keeps >= 4 of them within 1 point of all features."""
    x, y = _informative(n_features=40)
    out = leanml.select_features(
        LogisticRegression(max_iter=2000),
        data=(x, y),
        select="rfe",
        n_features=8,
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    kept = _kept(out.result.details)
    assert len(kept) == 8 and len(kept & INFORMATIVE) >= 4
    assert out.after.metric >= out.before.metric - 0.01
    assert _onnx_columns(out.artifact) == 40
    test_x = x[:100].astype(np.float32)
    dropped = sorted(set(range(40)) - kept)
    _check_baked_in(
        out.artifact, test_x, out.model.sklearn.predict_proba(test_x), dropped, sorted(kept)
    )


def test_pca_on_breast_cancer_keeps_the_metric_and_takes_raw_columns(tmp_path):
    out = leanml.select_features(
        LogisticRegression(max_iter=5000),
        data="breast_cancer",
        select="none",
        transform="pca",
        pca_variance=0.95,
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    d = out.result.details
    assert d["pca_explained_variance"] >= 0.95 and 1 < d["pca_components"] < 30
    assert out.after.metric >= out.before.metric - 0.01
    assert _onnx_columns(out.artifact) == 30
    assert any(p.title.startswith("PCA") for p in out.result.plots)
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer().data.astype(np.float32)[:100]
    np.testing.assert_allclose(
        OnnxRunner(out.artifact).predict(raw),
        out.model.sklearn.predict_proba(raw),
        rtol=1e-3,
        atol=1e-4,
    )


def test_regressor_rfe_and_export(tmp_path):
    x, y = make_regression(
        n_samples=400, n_features=15, n_informative=4, shuffle=False, noise=1.0, random_state=0
    )
    out = leanml.select_features(
        Ridge(), data=(x, y), select="rfe", n_features=4, measure=FAST_MEASURE, work_dir=tmp_path
    )
    assert _kept(out.result.details) == {0, 1, 2, 3}
    assert out.after.metric > 0.99  # r2
    xt = x[:50].astype(np.float32)
    _check_baked_in(
        out.artifact,
        xt,
        out.model.sklearn.predict(xt).reshape(-1, 1),
        list(range(4, 15)),
        [0, 1, 2, 3],
    )


def test_torch_mlp_rfe_baked_in(tmp_path):
    out = leanml.select_features(
        "mlp",
        data="breast_cancer",
        model_args={"width": 16},
        select="rfe",
        n_features=10,
        step=4,
        train={"epochs": 10, "lr": 0.01},
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    d = out.result.details
    assert d["ranking_estimator"] == "GradientBoostingClassifier (proxy)"
    assert d["n_features_selected"] == 10
    assert _onnx_columns(out.artifact) == 30
    assert out.model.torch.net.head.in_features == 16 and out.model.torch.front.out_features == 10
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    names = [str(n) for n in bc.feature_names]
    kept = [names.index(n) for n in d["selected_features"]]
    raw = bc.data.astype(np.float32)[:100]
    _check_baked_in(
        out.artifact, raw, predict(out.model.torch, raw), sorted(set(range(30)) - set(kept)), kept
    )
    assert out.after.metric >= 0.85


def _run(recipe: dict, tmp_path: Path, name: str = "run"):
    recipe = {"seed": 0, "measure": FAST_MEASURE, **recipe}
    return leanml.run(recipe, output=tmp_path / name)


@pytest.mark.slow
def test_mlp_recipe_pca_within_one_point(tmp_path, validate_metrics):
    result = _run(
        {
            "task": {"data": "breast_cancer", "model": "mlp", "model_args": {"width": 32}},
            "train": {"epochs": 20, "lr": 0.01},
            "stages": [{"features": {"select": "none", "transform": "pca", "pca_variance": 0.95}}],
        },
        tmp_path,
    )
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    validate_metrics(metrics)
    base, feat = metrics["stages"]
    assert (
        feat["kind"] == "features" and feat["accepted"] and feat["metric"] >= base["metric"] - 0.01
    )
    assert len(feat["selected_features"]) == 30 and feat["pca_components"] < 30
    assert _onnx_columns(result.run_dir / "model.onnx") == 30
    assert "PCA: cumulative explained variance" in (result.run_dir / "report.html").read_text()


@pytest.mark.slow
def test_gradient_boosting_recipe_tunes_selects_and_exports(tmp_path, validate_metrics):
    pytest.importorskip("optuna")
    if "tune" not in leanml.techniques.stage_kinds():
        pytest.skip("the tune stage is not registered")
    result = _run(
        {
            "task": {
                "data": "breast_cancer",
                "model": "sklearn:GradientBoostingClassifier",
                "model_args": {"n_estimators": 20, "max_depth": 2},
            },
            "constraints": {"max_metric_drop": 0.05},
            "stages": [
                {
                    "tune": {
                        "sampler": "grid",
                        "trials": 2,
                        "pruner": "none",
                        "space": {"task.model_args.n_estimators": [20, 40]},
                    }
                },
                {"features": {"select": "rfe", "n_features": 10, "step": 4}},
            ],
        },
        tmp_path,
    )
    metrics = result.metrics
    validate_metrics(metrics)
    kinds = [s["kind"] for s in metrics["stages"]]
    assert kinds == ["baseline", "tune", "features"], (kinds, metrics.get("failed_stages"))
    feat = metrics["stages"][2]
    assert (
        feat["accepted"]
        and len(feat["selected_features"]) == 10
        and feat["latency_ms"]["runtime"] == "onnxruntime"
    )
    assert feat["ranking_estimator"] == "GradientBoostingClassifier"
    assert metrics["final"] == "features"
    est = result.model.sklearn
    assert est.named_steps["estimator"].n_estimators in (20, 40)
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer().data.astype(np.float32)
    model_onnx = result.run_dir / "model.onnx"
    assert _onnx_columns(model_onnx) == 30
    np.testing.assert_allclose(
        OnnxRunner(model_onnx).predict(raw), est.predict_proba(raw), rtol=1e-3, atol=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "args", "data", "metric"),
    [
        ("sklearn:LogisticRegression", {"max_iter": 2000}, "wine", "accuracy"),
        ("sklearn:RandomForestClassifier", {"n_estimators": 20}, "wine", "accuracy"),
        ("sklearn:GradientBoostingRegressor", {"n_estimators": 30}, "regression", "r2"),
    ],
)
def test_sklearn_models_are_first_class(tmp_path, validate_metrics, model, args, data, metric):
    if data == "regression":
        x, y = make_regression(n_samples=300, n_features=12, n_informative=4, random_state=0)
        np.savez(tmp_path / "reg.npz", x=x.astype(np.float32), y=y.astype(np.float32))
        data = f"npz:{tmp_path / 'reg.npz'}"
    result = _run(
        {
            "task": {"data": data, "model": model, "model_args": args, "metric": metric},
            "constraints": {"max_metric_drop": 1.0},
            "stages": [{"features": {"select": "importance", "n_features": 5}}],
        },
        tmp_path,
    )
    validate_metrics(result.metrics)
    base, feat = result.metrics["stages"]
    assert base["latency_ms"]["runtime"] == feat["latency_ms"]["runtime"] == "onnxruntime"
    assert feat["ranking_estimator"] == model.split(":")[1] and feat["n_features_selected"] == 5
    est = result.model.sklearn
    x_test = np.load(tmp_path / "reg.npz")["x"] if metric == "r2" else None
    if x_test is None:
        from sklearn.datasets import load_wine

        x_test = load_wine().data.astype(np.float32)
    ref = est.predict_proba(x_test) if metric == "accuracy" else est.predict(x_test).reshape(-1, 1)
    got = OnnxRunner(result.run_dir / "model.onnx").predict(x_test)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 if metric == "r2" else 1e-4)


# -- bad input -------------------------------------------------------------------------------------


def _csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["a,b,color,label"]
    for i in range(120):
        label = i % 2
        rows.append(
            f"{rng.normal(3 * label, 1):.3f},{rng.normal():.3f},{['red', 'green', 'blue'][i % 3]},{label}"
        )
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _csv_recipe(path: Path, **task) -> dict:
    return {
        "task": {
            "data": f"csv:{path}",
            "target": "label",
            "model": "sklearn:LogisticRegression",
            **task,
        },
        "stages": [{"features": {"select": "mutual_info", "n_features": 2}}],
    }


def test_non_numeric_csv_column_needs_an_encoding(tmp_path):
    path = _csv(tmp_path)
    with pytest.raises(
        InvalidInputError, match=r"non-numeric columns color \(3 distinct values\).*one_hot: true"
    ):
        _run(_csv_recipe(path), tmp_path)
    result = _run(_csv_recipe(path, one_hot=True), tmp_path, "one-hot")
    feat = result.metrics["stages"][1]
    assert feat["n_features_in"] == 5 and "a" in feat["selected_features"]


def test_missing_target_column(tmp_path):
    with pytest.raises(
        InvalidInputError,
        match=r"target column 'nope' does not exist; columns are \['a', 'b', 'color', 'label'\]",
    ):
        _run(_csv_recipe(_csv(tmp_path), target="nope"), tmp_path)


@pytest.mark.parametrize(
    ("task", "stage", "needle"),
    [
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"n_features": 50},
            "features.n_features is 50 but the data has only 30 columns",
        ),
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"transform": "pca", "n_components": 31},
            "n_components is 31",
        ),
        ({"data": "digits", "model": "cnn"}, {}, "stage 'features' works on tabular data"),
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"estimator": "model"},
            "a PyTorch model does not",
        ),
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"select": "variance", "n_features": 5},
            "stages[0].features",
        ),
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"n_features": 1.5},
            "stages[0].features.n_features",
        ),
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"train": {"epoch": 3}},
            "stages[0].features.train",
        ),
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"n_features": 0},
            "stages[0].features.n_features",
        ),
        (
            {"data": "breast_cancer", "model": "mlp"},
            {"select": "rfecv", "estimator": "permutation"},
            "estimator 'permutation' ranks columns for select importance or rfe",
        ),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, task, stage, needle):
    with pytest.raises(InvalidInputError) as info:
        _run({"task": task, "stages": [{"features": stage}]}, tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run" / "stages" / "00-baseline").exists()


def test_prune_on_a_sklearn_model_says_so(tmp_path):
    if "prune" not in leanml.techniques.stage_kinds():
        pytest.skip("the prune stage is not registered")
    with pytest.raises(InvalidInputError, match="scikit-learn"):
        _run(
            {
                "task": {"data": "wine", "model": "sklearn:LogisticRegression"},
                "stages": [{"prune": {}}],
            },
            tmp_path,
        )


def test_quantize_after_a_sklearn_model_is_refused_before_anything_trains(tmp_path):
    with pytest.raises(
        InvalidInputError, match="stage 'quantize' does not apply to a scikit-learn"
    ):
        _run(
            {
                "task": {"data": "wine", "model": "sklearn:LogisticRegression"},
                "stages": [{"quantize": {"mode": "dynamic"}}],
            },
            tmp_path,
        )
    assert not (tmp_path / "run").exists()


def test_cli_exits_2_with_one_line_on_image_data(tmp_path):
    from leanml.cli import app

    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": {"data": "digits", "model": "cnn"},
                "stages": [{"features": {"select": "rfe"}}],
            }
        )
    )
    result = CliRunner().invoke(app, ["run", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "tabular data" in err


def test_select_features_rejects_a_bare_torch_module():
    from torch import nn

    with pytest.raises(InvalidInputError, match="factory"):
        leanml.select_features(nn.Linear(4, 2), data="breast_cancer")


# -- rankings that see non-linear signal ------------------------------------------------------------


def _nonlinear(n_samples: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4 informative columns related to the label non-linearly (3 clusters per class), 12 noise."""
    x, y = make_classification(
        n_samples=n_samples,
        n_features=16,
        n_informative=4,
        n_redundant=0,
        n_clusters_per_class=3,
        class_sep=1.0,
        shuffle=False,
        random_state=seed,
    )
    return x.astype(np.float32), y


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["auto", "permutation"])  # auto is the gbm proxy for an MLP
def test_mlp_rfe_keeps_non_linear_informative_columns_and_retrains(tmp_path, estimator):
    x, y = _nonlinear()
    out = leanml.select_features(
        "mlp",
        data=(x, y),
        select="rfe",
        n_features=6,
        step=2,
        estimator=estimator,
        train={"epochs": 30},
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    d = out.result.details
    assert len(_kept(d) & set(range(4))) >= 3, d["selected_features"]
    label = "the model's permutation importance (val)" if estimator == "permutation" else None
    assert d["ranking_estimator"] == (label or "GradientBoostingClassifier (proxy)")
    assert out.result.train_result is not None  # retrained on the kept columns
    assert out.after.metric >= out.before.metric - 0.01


def test_each_ranking_on_a_sklearn_model(tmp_path):
    """linear and gbm proxies, mutual information and permutation importance all run and rank."""
    x, y = _nonlinear(600)
    kept = {}
    for select, estimator in [
        ("rfe", "linear"),
        ("rfe", "gbm"),
        ("importance", "permutation"),
        ("mutual_info", "auto"),
    ]:
        out = leanml.select_features(
            "sklearn:KNeighborsClassifier",
            data=(x, y),
            select=select,
            n_features=4,
            step=4,
            estimator=estimator,
            measure=FAST_MEASURE,
            work_dir=tmp_path / f"{select}-{estimator}",
        )
        kept[(select, estimator)] = _kept(out.result.details)
        assert len(out.result.details["feature_scores"]) == 16
    # the model-based non-linear rankings find at least three of the four informative columns;
    # univariate mutual information misses columns whose signal is in their interactions
    for key in [("rfe", "gbm"), ("importance", "permutation")]:
        assert len(kept[key] & set(range(4))) >= 3, (key, kept[key])


def test_auto_count_picks_on_validation_and_reports_the_curve(tmp_path):
    x, y = _informative(n_features=20, n_samples=600)
    out = leanml.select_features(
        LogisticRegression(max_iter=2000),
        data=(x, y),
        select="rfe",
        n_features="auto",
        step=4,
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    d = out.result.details
    curve = d["metric_curve"]
    assert curve["n_features"] == list(range(1, 21))
    assert 2 <= d["n_features_selected"] < 20
    # the pick is the smallest count within the tolerance of the best validation score
    best = max(curve["metric"])
    k = d["n_features_selected"]
    assert curve["metric"][k - 1] >= best - 0.005
    assert all(v < best - 0.005 for v in curve["metric"][: k - 1])
    assert _kept(d) <= set(range(20)) and len(_kept(d)) == k


def test_a_constant_column_is_named(tmp_path):
    x, y = _informative(n_features=8, n_samples=200)
    x[:, 3] = 1.0
    with pytest.raises(InvalidInputError, match=r"column\(s\) x3 are constant.*select: variance"):
        leanml.select_features(
            LogisticRegression(), data=(x, y), select="rfe", n_features=3, work_dir=tmp_path
        )


def test_text_column_with_too_many_values_under_one_hot(tmp_path):
    rows = ["a,city,label"] + [f"{i % 7},c{i % 30},{i % 2}" for i in range(120)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InvalidInputError) as info:
        _run(_csv_recipe(path, one_hot=True), tmp_path)
    msg = str(info.value)
    assert "city (30 distinct values)" in msg and "hash" in msg and "\n" not in msg


def test_an_all_nan_column_is_named(tmp_path):
    rows = ["a,empty,label"] + [f"{i % 7},,{i % 2}" for i in range(120)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InvalidInputError, match=r"\['empty'\] hold no value in any row.*drop them"):
        _run(_csv_recipe(path), tmp_path)


def _skewed_interacting(n: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x0 log-normal (non-negative, skewed), x1 minus a log-normal (skewed, negative), x2·x3 interact;
    x4-x7 noise. The label depends on log(x0) and x2·x3 (and a little on x2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    x[:, 0] = np.exp(1.5 * x[:, 0])
    x[:, 1] = -np.exp(x[:, 1])
    logit = 1.5 * np.log1p(x[:, 0]) - 1.0 + 3.0 * x[:, 2] * x[:, 3] + 0.5 * x[:, 2]
    y = (logit + 0.3 * rng.logistic(size=n) > 0).astype(int)
    return x.astype(np.float32), y


@pytest.mark.parametrize(
    "engineer",
    [
        ["log"],
        pytest.param(["quantile"], marks=pytest.mark.slow),  # skl2onnx's converter takes ~10 s
        ["poly"],
        ["bins"],
        pytest.param(["log", "quantile", "poly", "bins"], marks=pytest.mark.slow),
    ],
)
def test_each_engineering_transform_is_baked_into_the_onnx_model(tmp_path, engineer):
    """Raw columns in; ONNX Runtime equals the Python pipeline; dropped columns do not matter."""
    x, y = _skewed_interacting()
    out = leanml.select_features(
        LogisticRegression(max_iter=2000),
        data=(x, y),
        select="rfe",
        n_features=6,
        estimator="gbm",
        step=2,
        engineer=engineer,
        poly_top_k=3,
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    d = out.result.details
    assert d["engineer"] == engineer
    kept = sorted(_kept(d))
    dropped = sorted(set(range(8)) - set(kept))
    assert {0, 2, 3} <= set(kept)
    assert _onnx_columns(out.artifact) == 8
    pipe = out.model.sklearn
    eng = pipe.named_steps["engineer"]
    parts = {name: cols for name, _, cols in eng.transformers_ if name != "remainder"}
    # positions among the kept columns: x0 is non-negative and skewed, x1 skewed and negative
    if "log" in engineer:
        assert parts["log"] == [kept.index(0)]
    if "quantile" in engineer:
        assert parts["quantile"] == ([kept.index(1)] if "log" in engineer else [0, 1])
    if "poly" in engineer or "bins" in engineer:
        assert len(parts["poly" if "poly" in engineer else "bins"]) == 3
    width = eng.transform(x[:5, kept]).shape[1]
    extra = 6 if "poly" in engineer else 0  # 3 squares + 3 pairwise products of the top 3
    assert width >= len(kept) + extra + (3 if "bins" in engineer else 0)
    _check_baked_in(out.artifact, x, pipe.predict_proba(x), dropped, kept)
    np.testing.assert_allclose(
        OnnxRunner(out.artifact).predict(x), pipe.predict_proba(x), rtol=0, atol=1e-4
    )


def test_hist_gradient_boosting_behind_selection_and_engineering_exports(tmp_path):
    """skl2onnx converts HistGradientBoosting behind ColumnSelect and the engineering transformer
    (leanml's conversion shim for its boolean missing-value flags); ONNX Runtime equals sklearn."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    x, y = _skewed_interacting()
    # one OpenMP thread: HGB's thread team spin-waits on a busy machine (minutes instead of seconds)
    with threadpool_limits(limits=1, user_api="openmp"):
        out = leanml.select_features(
            HistGradientBoostingClassifier(max_iter=30, random_state=0),
            data=(x, y),
            select="importance",
            n_features=5,
            estimator="gbm",
            engineer=["poly"],
            poly_top_k=3,
            measure=FAST_MEASURE,
            work_dir=tmp_path,
        )
    pipe = out.model.sklearn
    assert type(pipe.named_steps["estimator"]).__name__ == "HistGradientBoostingClassifier"
    assert "engineer" in pipe.named_steps and _onnx_columns(out.artifact) == 8
    kept = sorted(_kept(out.result.details))
    dropped = sorted(set(range(8)) - set(kept))
    _check_baked_in(out.artifact, x, pipe.predict_proba(x), dropped, kept)
    labels = OnnxRunner(out.artifact, output="label").predict(x).ravel()
    np.testing.assert_array_equal(labels, pipe.predict(x))


def test_engineer_auto_keeps_what_helps_on_validation(tmp_path):
    """A linear model on an interaction: auto keeps poly, and the test metric shows why."""
    x, y = _skewed_interacting(1200)
    out = leanml.select_features(
        LogisticRegression(max_iter=2000),
        data=(x, y),
        select="none",
        engineer="auto",
        poly_top_k=8,
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    d = out.result.details
    auto = d["engineer_auto"]
    assert "poly" in d["engineer"]
    assert set(auto["trials_val_metric"]) >= {"log", "quantile", "poly", "bins"}
    # each kept transform passed the noise rule on the set it joined
    chosen = "+".join(d["engineer"])
    assert auto["trials_val_metric"][chosen] > auto["baseline_val_metric"]
    assert out.after.metric > out.before.metric + 0.05


def test_engineer_auto_keeps_nothing_on_a_linear_table(tmp_path):
    x, y = _informative(n_features=10, n_samples=600)
    out = leanml.select_features(
        LogisticRegression(max_iter=2000),
        data=(x, y),
        select="none",
        engineer="auto",
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    d = out.result.details
    assert d["engineer"] == []
    assert "engineer auto kept none" in " ".join(out.result.notes)


@pytest.mark.parametrize(
    ("model", "stage", "needle"),
    [
        ("sklearn:LogisticRegression", {"engineer": ["log", "sqrt"]}, "log, quantile, poly, bins"),
        ("sklearn:LogisticRegression", {"engineer": "square"}, "stages[0].features.engineer"),
        ("mlp", {"engineer": ["poly"]}, "features.engineer works on scikit-learn models"),
    ],
)
def test_bad_engineer_settings_fail_in_one_line_before_training(tmp_path, model, stage, needle):
    task = {"data": "breast_cancer", "model": model}
    with pytest.raises(InvalidInputError) as info:
        _run({"task": task, "stages": [{"features": stage}]}, tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run" / "stages" / "00-baseline").exists()
