"""Keras 3 models (.keras) through leanml on Keras' PyTorch backend: loading, export parity, the
stages that apply, the one that does not (said, not crashed), and bad input. Every Keras model is
built here; nothing is downloaded."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("KERAS_BACKEND", "torch")  # before the first `import keras`, as leanml does
keras = pytest.importorskip("keras")

import leanml
from leanml.cli import app
from leanml.errors import InvalidInputError, StageNotApplicable
from leanml.models import KerasModule, is_keras_module, load_keras
from leanml.pipeline._tasks import as_model, model_file_to_onnx
from leanml.runtime import OnnxRunner

from ..conftest import FAST_MEASURE

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Keras' many small ops run slower on two contending threads than on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digits_nhwc(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] / 16.0).astype(np.float32)[..., None], d.target[:n].astype(np.int64)


def _keras_cnn(path: Path, *, train: bool = False, width: int = 16) -> Path:
    """A small channels-last Keras CNN with batch norm and dropout, saved as .keras."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.2)(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    if train:
        x, y = _digits_nhwc()
        model.compile(
            keras.optimizers.Adam(0.01),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A trained Keras CNN and channels-last digits as an NPZ file."""
    folder = tmp_path_factory.mktemp("keras")
    x, y = _digits_nhwc()
    np.savez(folder / "digits.npz", x=x, y=y)
    return _keras_cnn(folder / "cnn.keras", train=True), folder / "digits.npz"


def _fails_with_one_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output + result.stderr
    for needle in needles:
        assert needle in err, err


# -- loading and export ---------------------------------------------------------------------------


def test_a_keras_file_loads_as_a_torch_module_with_keras_predictions(tmp_path):
    path = _keras_cnn(tmp_path / "m.keras")
    model, spec = as_model(str(path))
    assert isinstance(model.torch, KerasModule) and spec == str(path)
    x, _ = _digits_nhwc(16)
    import torch

    with torch.inference_mode():
        ours = model.torch.eval()(torch.as_tensor(x)).numpy()
    theirs = keras.saving.load_model(path).predict(x, verbose=0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_train_mode_reaches_keras(tmp_path):
    """train()/eval() switch Keras' dropout and batch norm, which ignore torch's mode flag."""
    import torch

    net = load_keras(_keras_cnn(tmp_path / "m.keras"))
    x = torch.as_tensor(_digits_nhwc(32)[0])
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), net(x))
        assert not torch.allclose(net.train()(x), net.eval()(x))


def test_the_onnx_export_matches_keras_and_keeps_channels_last(tmp_path):
    path = _keras_cnn(tmp_path / "m.keras")
    x, _ = _digits_nhwc(32)
    onnx_path = model_file_to_onnx(path, sample=leanml.data.Split(x, None))
    onnx_runner = OnnxRunner(onnx_path)
    assert [d for d in onnx_runner.inputs[0].shape[1:]] == [8, 8, 1]
    expected = keras.saving.load_model(path).predict(x, verbose=0)
    np.testing.assert_allclose(onnx_runner.predict(x), expected, atol=1e-4, rtol=1e-3)


def test_the_shared_trainer_fine_tunes_a_keras_module(tmp_path):
    from leanml.metrics import get_metric
    from leanml.training import TrainConfig, fit

    net = load_keras(_keras_cnn(tmp_path / "m.keras"))
    x, y = _digits_nhwc(256)
    split = leanml.data.Split(x, y)
    before = [p.detach().clone() for p in net.parameters() if p.requires_grad]
    result = fit(net, split, split, get_metric("accuracy"), TrainConfig(epochs=3, lr=0.01), seed=0)
    after = [p for p in net.parameters() if p.requires_grad]
    assert any(not np.allclose(a.detach(), b) for a, b in zip(after, before))
    losses = [e["train_loss"] for e in result.history]
    assert losses[-1] < losses[0]


# -- a run: the stages that apply, and the one that does not ---------------------------------------


@pytest.mark.slow
def test_a_run_skips_prune_with_a_note_then_quantizes_and_distills(trained, tmp_path):
    model, data = trained
    recipe = {
        "name": "keras",
        "task": {"data": f"npz:{data}", "model": str(model)},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.01},
        "measure": copy.deepcopy(FAST_MEASURE),
        "constraints": {"max_metric_drop": 1.0},
        "stages": [
            {"prune": {"kind": "channel", "amount": 0.5}},
            {
                "distill": {
                    "student": {"model": "mlp", "model_args": {"width": 16}},
                    "compare_scratch": False,
                }
            },
            {"quantize": {"mode": "static", "calibration": {"samples": 64}}},
        ],
    }
    result = leanml.run(recipe, output=tmp_path / "run")
    (skipped,) = result.metrics["skipped_stages"]
    assert skipped["kind"] == "prune" and "does not apply to a Keras model" in skipped["reason"]
    assert result.metrics["failed_stages"] == []
    assert "Stages skipped" in (result.run_dir / "report.md").read_text()
    kinds = [s["kind"] for s in result.metrics["stages"]]
    assert kinds == ["baseline", "distill", "quantize"]
    assert result.metrics["task"]["model"] == "cnn.keras"
    assert all(s["accepted"] for s in result.metrics["stages"])
    assert (result.run_dir / "model.onnx").is_file()


@pytest.mark.slow
def test_static_int8_of_the_keras_model_stays_channels_last(trained, tmp_path):
    model, data = trained
    arrays = np.load(data)
    out = leanml.quantize(
        str(model), data=(arrays["x"], arrays["y"]), mode="static", measure=FAST_MEASURE
    )
    assert out.after.size_bytes < out.before.size_bytes
    assert list(OnnxRunner(out.artifact).inputs[0].shape[1:]) == [8, 8, 1]


def test_the_prune_function_says_it_does_not_apply(tmp_path):
    path = _keras_cnn(tmp_path / "m.keras")
    x, y = _digits_nhwc(200)
    with pytest.raises(StageNotApplicable, match="Torch-Pruning's dependency graph"):
        leanml.prune(str(path), data=(x, y), kind="channel", amount=0.5)


def test_measure_cli_measures_the_export_of_a_keras_file(trained):
    model, data = trained
    r = runner.invoke(
        app, ["measure", str(model), "--data", f"npz:{data}", "--batch-sizes", "1", "--json"]
    )
    assert r.exit_code == 0, r.output
    import json

    out = json.loads(r.stdout)
    assert out["metric"]["name"] == "accuracy" and out["metric"]["value"] > 0.5
    assert out["params"] > 0


# -- bad input: one line, exit 2 -------------------------------------------------------------------


def test_a_file_keras_cannot_load_is_one_line(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_text("not a zip archive")
    x, y = _digits_nhwc(200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = runner.invoke(app, ["measure", str(bad), "--data", f"npz:{tmp_path / 'd.npz'}"])
    _fails_with_one_line(r, "Keras cannot load", "bad.keras")


def test_an_unregistered_custom_layer_is_named_with_how_to_register_it(tmp_path):
    @keras.saving.register_keras_serializable(package="leanml_test")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(Doubler()(inputs))).save(tmp_path / "c.keras")
    del keras.saving.get_custom_objects()["leanml_test>Doubler"]
    with pytest.raises(InvalidInputError) as e:
        load_keras(tmp_path / "c.keras")
    msg = str(e.value)
    assert "Doubler" in msg and "register_keras_serializable" in msg and "\n" not in msg


def test_a_lambda_layer_needs_trust(tmp_path):
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(tmp_path / "l.keras")
    with pytest.raises(InvalidInputError, match="--trust-pickle"):
        load_keras(tmp_path / "l.keras")
    assert isinstance(load_keras(tmp_path / "l.keras", trust=True), KerasModule)


def test_channels_first_data_for_a_channels_last_model_says_the_layout(tmp_path):
    path = _keras_cnn(tmp_path / "m.keras")
    recipe = {"task": {"data": "digits", "model": str(path)}, "stages": [{"quantize": {}}]}
    with pytest.raises(InvalidInputError, match=r"channels-last.*transpose\(0, 2, 3, 1\)"):
        leanml.run(recipe, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="the TensorFlow extra is installed"
)
def test_a_saved_model_without_the_extra_names_the_pip_install(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 4), np.float32), y=np.zeros(40, np.int64))
    r = runner.invoke(app, ["measure", str(saved), "--data", f"npz:{tmp_path / 'd.npz'}"])
    _fails_with_one_line(r, "pip install 'leanml[tensorflow]'")


def test_features_rebuilds_a_tabular_keras_model_for_the_kept_columns(tmp_path):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((30,))
    norm = keras.layers.Normalization()
    h = keras.layers.Dense(8, activation="relu")(norm(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    norm.adapt(x)
    model.save(tmp_path / "tab.keras")
    out = leanml.select_features(
        str(tmp_path / "tab.keras"),
        data=(x, y),
        select="mutual_info",
        n_features=10,
        train={"epochs": 8, "lr": 0.01},
        measure=FAST_MEASURE,
        max_metric_drop=1.0,
    )
    assert list(OnnxRunner(out.artifact).inputs[0].shape[1:]) == [30]  # raw columns in
    assert is_keras_module(out.model.torch)
    assert out.after.metric > 0.8  # the Normalization layer was adapted to the kept columns


@pytest.mark.slow
def test_the_keras_example_runs(tmp_path, monkeypatch):
    """examples/keras.yaml with its budgets cut: the entry point trains and saves the .keras file."""
    import shutil

    import yaml

    root = Path(__file__).resolve().parents[2] / "examples"
    for name in ("keras.yaml", "keras_digits.py"):
        shutil.copy(root / name, tmp_path / name)
    recipe = yaml.safe_load((tmp_path / "keras.yaml").read_text())
    recipe["train"]["epochs"] = 3
    recipe["measure"] = copy.deepcopy(FAST_MEASURE)
    recipe["constraints"]["max_metric_drop"] = 1.0
    (tmp_path / "keras.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.syspath_prepend(str(tmp_path))
    result = leanml.run(tmp_path / "keras.yaml", output=tmp_path / "run")
    assert (tmp_path / "keras_digits.keras").is_file()
    assert [s["kind"] for s in result.metrics["stages"]] == ["baseline", "distill", "quantize"]
    assert not result.metrics.get("failed_stages")
