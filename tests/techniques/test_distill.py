"""The distill stage: losses, students, hint layers, teacher caching, transfer data, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import leanml
from leanml.data import Dataset, load_data
from leanml.errors import InvalidInputError
from leanml.metrics import get_metric
from leanml.models import Model
from leanml.task import make_task
from leanml.techniques.distill._losses import distillation_loss, hint_loss, make_projection
from leanml.training import TrainConfig, fit

from ..conftest import FAST_MEASURE, tiny_recipe

TRAIN = {"epochs": 2, "batch_size": 64, "lr": 0.01}


@pytest.fixture(scope="module")
def digits_teacher():
    """A small digits CNN trained for a few epochs on part of digits, and its task."""
    full = load_data("digits", seed=0)
    small = Dataset(
        "digits-part",
        "image",
        full.train.head(400),
        full.val.head(150),
        full.test.head(150),
        n_classes=10,
    )
    task = make_task(small, metric="accuracy", model="cnn", model_args={"width": 8, "depth": 1})
    torch.manual_seed(0)
    net = task.build_torch_model()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=3, lr=0.01), seed=0)
    return task, Model(torch=net, model_args=dict(task.model_args), factory="cnn")


def run_distill(teacher_and_task, **kwargs):
    task, teacher = teacher_and_task
    kwargs.setdefault("student_train", {"epochs": 2})
    kwargs.setdefault("compare_scratch", False)
    return leanml.distill(teacher.clone(), task=task, train=TRAIN, measure=FAST_MEASURE, **kwargs)


# -- losses ---------------------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_logit_loss_matches_a_hand_computed_case():
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = np.array([[3.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
    y = np.array([0, 2])
    temp, alpha = 2.0, 0.3
    p_t, p_s = _softmax(t / temp), _softmax(s / temp)
    kl = (p_t * np.log(p_t / p_s)).sum(-1).mean()
    ce = -np.log(_softmax(s)[np.arange(2), y]).mean()
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    got = distillation_loss(
        torch.tensor(s),
        torch.tensor(t),
        torch.tensor(y),
        get_metric("accuracy"),
        temperature=temp,
        alpha=alpha,
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # Without labels only the soft term is left, whatever alpha says.
    soft = distillation_loss(
        torch.tensor(s),
        torch.tensor(t),
        None,
        get_metric("accuracy"),
        temperature=temp,
        alpha=alpha,
    )
    assert float(soft) == pytest.approx(temp**2 * kl, rel=1e-6)
    # A student equal to its teacher has zero soft loss.
    same = distillation_loss(
        torch.tensor(t), torch.tensor(t), None, get_metric("accuracy"), temperature=temp, alpha=1.0
    )
    assert float(same) == pytest.approx(0.0, abs=1e-7)


def test_regression_loss_is_mse_to_the_teacher_mixed_with_the_labels():
    s, t, y = (
        torch.tensor([[1.0], [2.0]]),
        torch.tensor([[0.0], [4.0]]),
        torch.tensor([[1.0], [1.0]]),
    )
    got = distillation_loss(s, t, y, get_metric("mse"), temperature=5.0, alpha=0.25)
    expected = 0.25 * ((1 - 0) ** 2 + (2 - 4) ** 2) / 2 + 0.75 * ((1 - 1) ** 2 + (2 - 1) ** 2) / 2
    assert float(got) == pytest.approx(expected)


def test_projection_maps_student_features_to_the_teacher_width():
    conv = make_projection(torch.Size([2, 4, 8, 8]), torch.Size([2, 16, 4, 4]))
    assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == 4 and conv.out_channels == 16
    assert conv.kernel_size == (1, 1)
    loss = hint_loss(torch.randn(2, 4, 8, 8), torch.randn(2, 16, 4, 4), conv)
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    lin = make_projection(torch.Size([2, 10]), torch.Size([2, 32]))
    assert isinstance(lin, torch.nn.Linear) and (lin.in_features, lin.out_features) == (10, 32)
    assert isinstance(make_projection(torch.Size([2, 32]), torch.Size([2, 32])), torch.nn.Identity)


# -- the stage ------------------------------------------------------------------------------------


def test_distill_reports_teacher_scratch_and_student_side_by_side(digits_teacher):
    out = run_distill(digits_teacher, student={"model_args": {"width": 4}}, compare_scratch=True)
    details = out.result.details
    assert out.model.model_args == {"width": 4, "depth": 1} and out.model.factory == "cnn"
    assert details["student"]["param_ratio"] < 0.5
    assert details["student"]["student_params"] == sum(
        p.numel() for p in out.model.torch.parameters()
    )
    rows = {r["model"]: r for r in details["comparison"]["rows"]}
    assert details["comparison"]["split"] == "test"
    assert set(rows) == {"teacher", "student from scratch", "distilled student"}
    assert rows["distilled student"]["params"] < rows["teacher"]["params"]
    assert rows["distilled student"]["metric"] == pytest.approx(out.after.metric)
    assert rows["teacher"]["metric"] == pytest.approx(out.before.metric)
    assert any("of the teacher's" in n for n in out.result.notes)
    assert {p.kind for p in out.result.plots} >= {"bar", "line"}


def test_width_and_depth_multipliers_scale_the_teachers_arguments(digits_teacher):
    task, teacher = digits_teacher
    wide = Model(torch=teacher.torch, model_args={"width": 8, "depth": 2}, factory="cnn")
    out = leanml.distill(
        wide,
        task=task,
        student={"width_mult": 0.5, "depth_mult": 0.5},
        student_train={"epochs": 1},
        compare_scratch=False,
        train=TRAIN,
        measure=FAST_MEASURE,
    )
    assert out.model.model_args == {"width": 4, "depth": 1}


def test_a_zoo_model_of_another_family_can_be_the_student(digits_teacher):
    out = run_distill(
        digits_teacher, student={"model": "mlp", "model_args": {"width": 4, "depth": 1}}
    )
    assert out.model.factory == "mlp" and out.model.model_args == {"width": 4, "depth": 1}
    assert out.result.details["student"]["param_ratio"] < 1


def test_hint_layers_train_a_projection_when_widths_differ(digits_teacher):
    pairs = [("features.1", "features.1")]  # 8 teacher channels, 4 student channels
    plain = run_distill(
        digits_teacher, student={"model_args": {"width": 4}}, student_train={"epochs": 1}
    )
    hinted = run_distill(
        digits_teacher,
        student={"model_args": {"width": 4}},
        student_train={"epochs": 1},
        features=pairs,
        feature_weight=50.0,
    )
    assert hinted.result.details["features"] == [["features.1", "features.1"]]
    # The hint term is part of what the student is trained on.
    assert (
        hinted.result.train_result.history[0]["train_loss"]
        > plain.result.train_result.history[0]["train_loss"]
    )
    # The student's hooks are gone: the exported student has no stray captures.
    assert not any(m._forward_hooks for m in hinted.model.torch.modules())


def _count_teacher_samples(digits_teacher, *, epochs, augment, features=()):
    task, teacher = digits_teacher
    seen: list[int] = []
    counted = teacher.clone()
    counted.torch.register_forward_hook(lambda m, args, out: seen.append(len(out)))
    out = leanml.distill(
        counted,
        task=task,
        student={"model_args": {"width": 4}},
        student_train={"epochs": epochs},
        augment=augment or {},
        features=features,
        compare_scratch=False,
        train=TRAIN,
        measure=FAST_MEASURE,
    )
    return out, sum(seen)


def test_teacher_runs_once_per_sample_when_augmentation_is_off(digits_teacher):
    n_train = len(digits_teacher[0].data.train)
    out, seen = _count_teacher_samples(digits_teacher, epochs=3, augment=None)
    assert out.result.details["teacher_cached"] is True
    assert out.result.details["teacher_samples_run"] == n_train
    # Everything else (export tracing, parity checks, FLOP counting) is a few small batches.
    assert seen < n_train + 200


def test_with_augmentation_the_teacher_sees_every_augmented_batch(digits_teacher):
    n_train = len(digits_teacher[0].data.train)
    out, seen = _count_teacher_samples(
        digits_teacher,
        epochs=2,
        augment={"noise": 0.05, "mixup": 0.4},
        features=[("features.1", "features.1")],
    )
    details = out.result.details
    assert details["teacher_cached"] is False
    assert details["augment"] == {"noise": 0.05, "mixup": 0.4}
    assert details["teacher_samples_run"] >= 2 * (n_train - 64)
    assert seen >= 2 * (n_train - 64)
    assert np.isfinite(out.result.train_result.history[-1]["train_loss"])


def test_unlabelled_transfer_data_uses_only_the_teachers_outputs(digits_teacher, tmp_path):
    task, _ = digits_teacher
    x = task.data.train.x[:250]
    np.savez(tmp_path / "pool.npz", x=x)
    out = run_distill(
        digits_teacher,
        student={"model_args": {"width": 4}},
        transfer=f"unlabeled:{tmp_path / 'pool.npz'}",
    )
    details = out.result.details
    assert details["labelled"] is False and details["alpha"] == 1.0
    assert details["transfer_samples"] == 250 and details["teacher_samples_run"] == 250
    assert any("only targets" in n for n in out.result.notes)


def test_unlabelled_data_of_the_wrong_shape_is_refused(digits_teacher, tmp_path):
    np.savez(tmp_path / "flat.npz", x=np.zeros((20, 64), dtype=np.float32))
    with pytest.raises(InvalidInputError, match=r"shaped \[64\].*task's are shaped \[1, 8, 8\]"):
        run_distill(
            digits_teacher,
            student={"model_args": {"width": 4}},
            transfer=f"unlabeled:{tmp_path / 'flat.npz'}",
        )
    with pytest.raises(InvalidInputError, match="does not exist"):
        run_distill(
            digits_teacher,
            student={"model_args": {"width": 4}},
            transfer=f"unlabeled:{tmp_path / 'none.npz'}",
        )
    np.savez(tmp_path / "text.npz", x=np.full((20, 1, 8, 8), "a"))
    with pytest.raises(InvalidInputError, match=r"array 'x' has dtype <U1 \(text\)"):
        run_distill(
            digits_teacher,
            student={"model_args": {"width": 4}},
            transfer=f"unlabeled:{tmp_path / 'text.npz'}",
        )


def test_regression_teacher_distills_with_mse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x @ rng.normal(size=6) + 0.1 * rng.normal(size=300)).astype(np.float32)
    out = leanml.distill(
        "mlp",
        data=(x, y),
        model_args={"width": 32},
        student={"width_mult": 0.25},
        student_train={"epochs": 3},
        train={"epochs": 5, "lr": 0.01},
        measure=FAST_MEASURE,
        compare_scratch=False,
    )
    assert out.model.model_args["width"] == 8
    assert out.result.details["comparison"]["metric"] == "r2"
    assert any("temperature does not apply" in n for n in out.result.notes)


# -- bad input ------------------------------------------------------------------------------------


def test_a_student_that_is_not_smaller_warns(digits_teacher):
    with pytest.warns(UserWarning, match="not fewer than the teacher"):
        out = run_distill(
            digits_teacher, student={"model_args": {"width": 16}}, student_train={"epochs": 1}
        )
    assert any(n.startswith("Warning:") for n in out.result.notes)


def test_a_student_with_other_outputs_is_an_error_naming_both_shapes(
    digits_teacher, tmp_path, monkeypatch
):
    (tmp_path / "wrong_student.py").write_text(
        "import torch.nn as nn\n\ndef build(in_shape, n_outputs):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        InvalidInputError, match=r"student's output is shaped \[3\].*teacher's is \[10\]"
    ):
        run_distill(digits_teacher, student={"model": "wrong_student:build"})


def test_unknown_hint_layers_list_the_nearest_names(digits_teacher):
    with pytest.raises(
        InvalidInputError,
        match=r"'features\.9' is not a layer of the teacher; nearest names: features\.",
    ):
        run_distill(
            digits_teacher,
            student={"model_args": {"width": 4}},
            features=[("features.9", "features.1")],
        )
    with pytest.raises(
        InvalidInputError,
        match=r"'clasifier' is not a layer of the student; nearest names: classifier",
    ):
        run_distill(
            digits_teacher,
            student={"model_args": {"width": 4}},
            features=[("features.1", "clasifier")],
        )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"temperature": 0}, r"stages\[0\]\.distill\.temperature must be greater than 0; got 0"),
        ({"temperature": -2.0}, r"stages\[0\]\.distill\.temperature must be greater than 0"),
        ({"alpha": 1.5}, r"stages\[0\]\.distill\.alpha must be less than or equal to 1; got 1.5"),
        ({"alpha": -0.1}, r"stages\[0\]\.distill\.alpha must be greater than or equal to 0"),
        ({"student": {}}, r"stages\[0\]\.distill\.student must say how the student differs"),
        (
            {"student": {"width_mult": 0}},
            r"stages\[0\]\.distill\.student\.width_mult must be greater than 0",
        ),
        ({"data": "test"}, r"stages\[0\]\.distill\.data must be 'train' or 'unlabeled:PATH'"),
        (
            {"train": {"epochs": 0}},
            r"stages\[0\]\.distill\.train must hold valid train: keys; epochs",
        ),
        (
            {"augment": {"noise": -1}},
            r"stages\[0\]\.distill\.augment\.noise must be greater than or equal to 0",
        ),
    ],
)
def test_bad_keys_are_one_line_errors_naming_the_path(config, message):
    with pytest.raises(InvalidInputError, match=message):
        leanml.load_recipe(tiny_recipe(stages=[{"distill": config}]))


def test_a_missing_unlabelled_file_fails_before_the_baseline_trains(tmp_path):
    recipe = tiny_recipe(stages=[{"distill": {"data": "unlabeled:pool.npz"}}])
    with pytest.raises(
        InvalidInputError, match=r"distill.data: unlabelled data file .*pool.npz' does not exist"
    ):
        leanml.run(recipe, output=tmp_path / "run")
    assert not (tmp_path / "run" / "stages").exists()


def test_multipliers_need_the_teachers_family(digits_teacher):
    with pytest.raises(
        InvalidInputError, match="width_mult/depth_mult scale the teacher's 'cnn' arguments"
    ):
        run_distill(digits_teacher, student={"model": "mlp", "width_mult": 0.5})


# -- in a recipe ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_with_a_distill_stage_writes_valid_metrics(tmp_path, validate_metrics):
    recipe = tiny_recipe(
        stages=[
            {
                "distill": {
                    "student": {"width_mult": 0.5},
                    "temperature": 2.0,
                    "alpha": 0.8,
                    "train": {"epochs": 2},
                }
            }
        ],
        constraints={"max_metric_drop": 1.0},
    )
    result = leanml.run(recipe, output=tmp_path / "run")
    validate_metrics(result.metrics)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    validate_metrics(on_disk)
    stage = on_disk["stages"][1]
    assert stage["kind"] == "distill" and stage["accepted"] is True
    assert stage["student"]["model_args"] == {"width": 4, "depth": 1}
    assert [r["model"] for r in stage["comparison"]["rows"]] == [
        "teacher",
        "student from scratch",
        "distilled student",
    ]
    assert stage["params"] < on_disk["stages"][0]["params"]
    assert (tmp_path / "run" / "report.html").is_file()
