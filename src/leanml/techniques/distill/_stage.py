"""Knowledge distillation: train a smaller student on the teacher's outputs.

The student is the teacher's family with smaller arguments, another zoo model, or a user's model. It
learns from ``alpha · T² · KL(teacher/T ‖ student/T) + (1 − alpha) · CE(labels)`` (Hinton et al.),
or MSE to the teacher's outputs for regression, plus optional hint losses between named layers
(FitNets) through a learned projection. The stage also trains the same student from scratch with
the same budget, so the report shows what distillation bought.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..._text import times
from ...charts import Plot
from ...data import Split, check_finite, float_array, read_npz, take
from ...errors import InvalidInputError
from ...metrics import Metric
from ...models import Model
from ...search import Choice
from ...task import Task
from ...training import (
    TrainResult,
    forward,
    task_loss,
    to_tensor,
)
from .._base import Stage, StageContext, StageResult, register_stage
from . import _plan
from ._config import DistillConfig
from ._losses import (
    MAX_CACHE_BYTES,
    FeatureTaps,
    Teacher,
    TeacherOutputs,
    distillation_loss,
    hint_loss,
    make_projection,
    soft_loss,
)
from ._student import StudentPlan, plan_student


@register_stage("distill")
class DistillStage(Stage[DistillConfig]):
    """Train a smaller student on the teacher's outputs (and optionally its hidden features)."""

    Config = DistillConfig
    forms = ("torch",)
    contract_example: ClassVar[dict[str, Any] | None] = {
        "student": {"model_args": {"width": 4}},
        "train": {"epochs": 2},
        "compare_scratch": False,
    }
    plan_order: ClassVar[int | None] = 30

    def check(self, task: Task) -> None:
        cfg = self.config
        if task.model_kind not in ("torch", "keras"):
            raise InvalidInputError(
                f"stage 'distill' needs a PyTorch teacher; task.model {task.model!r} is a {task.model_kind} model"
            )
        if cfg.augment.enabled and isinstance(task.data.train.x, dict):
            raise InvalidInputError(
                "distill.augment (noise, mixup) needs array inputs; the data has named inputs (use augment: {})"
            )
        if cfg.data != "train":
            load_unlabeled(cfg.data, task)

    def check_model(self, model: Model, task: Task) -> None:
        """The student's factory and arguments (an unknown ``student.model``) fail before training."""
        if model.torch is not None:
            plan_student(self.config.student, model, task)

    @classmethod
    def plan_choices(cls, task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
        return _plan.choices(task, model, epochs=epochs, objective=objective)

    @classmethod
    def plan_outcome(cls, config: dict[str, Any], task: Task, model: Model) -> str:
        return _plan.outcome(config, task, model)

    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        cfg = self.config
        task = ctx.task
        assert model.torch is not None
        teacher_net = model.torch.eval()
        plan = plan_student(cfg.student, model, task)
        student = plan.build(task, seed=ctx.seed)
        notes: list[str] = []
        sizes = _compare_sizes(teacher_net, student, plan, notes)
        teacher_taps = (
            FeatureTaps(teacher_net, [t for t, _ in cfg.features], role="teacher")
            if cfg.features
            else None
        )
        student_taps = (
            FeatureTaps(student, [s for _, s in cfg.features], role="student")
            if cfg.features
            else None
        )
        teacher = Teacher(teacher_net, teacher_taps)
        try:
            projections = _probe(teacher, student, student_taps, task, cfg)
            transfer = _transfer_split(cfg, task)
            cache_note = _maybe_cache(teacher, transfer, cfg)
            loss = DistillLoss(
                teacher, task.metric, cfg, transfer, student_taps, projections, seed=ctx.seed
            )
            ctx.log(f"distilling into {plan.description} on {len(transfer)} samples")
            distilled = ctx.fit(
                student,
                cfg.train,
                train=transfer,
                loss_fn=loss,
                extra_parameters=[p for m in projections for p in m.parameters()],
                description="distill",
            )
        finally:
            for taps in (teacher_taps, student_taps):
                if taps is not None:
                    taps.remove()
        notes.append(cache_note)
        scratch_net, scratch = None, None
        if cfg.compare_scratch:
            scratch_net = plan.build(task, seed=ctx.seed)
            scratch = ctx.fit(scratch_net, cfg.train, description="student from scratch")
        result = Model(
            torch=student.eval(),
            model_args=dict(plan.model_args),
            factory=plan.model,
            info=dict(model.info),
        )
        details = _details(cfg, plan, sizes, transfer, teacher, distilled)
        plots = _report(
            ctx, model, result, scratch_net, cfg, task.metric, notes, details, distilled, scratch
        )
        return StageResult(
            result, notes=notes, details=details, plots=plots, train_result=distilled
        )


class DistillLoss:
    """``loss_fn(student, x, y, idx)`` for the shared trainer: soft + hard + hint losses of a batch."""

    def __init__(
        self,
        teacher: Teacher,
        metric: Metric,
        cfg: DistillConfig,
        transfer: Split,
        student_taps: FeatureTaps | None,
        projections: list[nn.Module],
        *,
        seed: int,
    ) -> None:
        self.teacher, self.metric, self.cfg = teacher, metric, cfg
        self.student_taps, self.projections = student_taps, projections
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.noise_scale = _noise_scale(transfer.x) if cfg.augment.noise > 0 else None

    def __call__(
        self, student: nn.Module, x: Any, y: torch.Tensor | None, idx: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.cfg
        perm, lam = None, 1.0
        if cfg.augment.enabled:
            x, perm, lam = self._augment(x)
        t: TeacherOutputs = self.teacher.lookup(idx) if self.teacher.cached else self.teacher.run(x)
        out = forward(student, x)
        if perm is None:
            loss = distillation_loss(
                out, t.outputs, y, self.metric, temperature=cfg.temperature, alpha=cfg.alpha
            )
        else:
            loss = soft_loss(out, t.outputs, temperature=cfg.temperature, kind=self.metric.loss)
            if y is not None and cfg.alpha < 1.0:
                hard = lam * task_loss(self.metric, out, y) + (1 - lam) * task_loss(
                    self.metric, out, y[perm]
                )
                loss = cfg.alpha * loss + (1 - cfg.alpha) * hard
        if self.student_taps is not None and cfg.feature_weight > 0:
            feats = self.student_taps.take()
            hints = sum(
                hint_loss(s, tf, p) for s, tf, p in zip(feats, t.features, self.projections)
            )
            loss = loss + cfg.feature_weight * hints / len(feats)
        return loss

    def _augment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        aug = self.cfg.augment
        x = x.float()
        if self.noise_scale is not None:
            x = x + aug.noise * self.noise_scale * torch.randn(x.shape, generator=self.gen)
        if aug.mixup > 0:
            lam = float(self.rng.beta(aug.mixup, aug.mixup))
            perm = torch.randperm(len(x), generator=self.gen)
            return lam * x + (1 - lam) * x[perm], perm, lam
        return x, None, 1.0


def _noise_scale(x: Any) -> torch.Tensor:
    """Per-column standard deviation for tabular data; one global deviation for images and sequences."""
    arr = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if arr.ndim == 2:
        return arr.std(0).clamp_min(1e-6)
    return arr.std().clamp_min(1e-6)


def load_unlabeled(spec: str, task: Task) -> Split:
    """The ``unlabeled:PATH`` transfer set: an NPZ array ``x`` shaped like the task's samples."""
    raw = spec.split(":", 1)[1].strip()
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else task.base_dir / path
    arrays = read_npz(path, what="distill.data: unlabelled data", example="x=...")
    if "x" not in arrays:
        raise InvalidInputError(
            f"distill.data: {str(path)!r} holds arrays {sorted(arrays)}; it needs an array named x"
        )
    x = float_array(arrays["x"], f"distill.data {str(path)!r}: array 'x'")
    want = task.data.input_shape
    if tuple(x.shape[1:]) != want or len(x) < 2:
        raise InvalidInputError(
            f"distill.data: samples in {str(path)!r} are shaped {list(x.shape[1:])} ({len(x)} rows); the task's are "
            f"shaped {list(want)}; give at least 2 rows of the task's sample shape"
        )
    check_finite(f"distill.data {str(path)!r}", x)
    return Split(x, None)


def _transfer_split(cfg: DistillConfig, task: Task) -> Split:
    return task.data.train if cfg.data == "train" else load_unlabeled(cfg.data, task)


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _compare_sizes(
    teacher: nn.Module, student: nn.Module, plan: StudentPlan, notes: list[str]
) -> dict[str, Any]:
    t, s = _params(teacher), _params(student)
    ratio = s / max(t, 1)
    notes.append(
        f"Student {plan.description}: {s:,} parameters, {ratio:.1%} of the teacher's {t:,}."
    )
    if s >= t:
        msg = (
            f"the distill student {plan.description} has {s:,} parameters, not fewer than the teacher's {t:,}; "
            "distillation is meant to shrink the model: give a smaller student (e.g. student: {width_mult: 0.5})"
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append("Warning: " + msg[0].upper() + msg[1:] + ".")
    return {"teacher_params": t, "student_params": s, "param_ratio": ratio}


def _probe(
    teacher: Teacher,
    student: nn.Module,
    student_taps: FeatureTaps | None,
    task: Task,
    cfg: DistillConfig,
) -> list[nn.Module]:
    """Check the student's output matches the teacher's; build a projection per hint pair."""
    x = to_tensor(take(task.data.train.x, slice(0, 2)))
    t = teacher.run(x)
    teacher.samples_run -= len(t.outputs)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        s_out = forward(student, x)
        s_feats = student_taps.take() if student_taps else []
    student.train(was_training)
    if s_out.shape[1:] != t.outputs.shape[1:]:
        raise InvalidInputError(
            f"distill.student: the student's output is shaped {list(s_out.shape[1:])} per sample but the teacher's is "
            f"{list(t.outputs.shape[1:])}; the student must predict the same outputs (check student.model_args)"
        )
    projections = []
    for (t_name, s_name), s_f, t_f in zip(cfg.features, s_feats, t.features):
        if s_f.ndim != t_f.ndim and not (s_f.ndim >= 2 and t_f.ndim >= 2):
            raise InvalidInputError(
                f"distill.features: student layer {s_name!r} gives {list(s_f.shape[1:])}, teacher layer {t_name!r} "
                f"gives {list(t_f.shape[1:])}; pair layers of the same kind"
            )
        projections.append(make_projection(s_f.shape, t_f.shape))
    return projections


def _maybe_cache(teacher: Teacher, transfer: Split, cfg: DistillConfig) -> str:
    n = len(transfer)
    if cfg.augment.enabled:
        return f"The teacher ran on every augmented batch ({n:,} samples per epoch): augmentation changes its inputs."
    if teacher.feature_bytes(transfer.x) > MAX_CACHE_BYTES:
        return f"The teacher ran on every batch: its hint features for {n:,} samples exceed the cache limit."
    teacher.cache(transfer.x)
    return f"The teacher's outputs on the {n:,} transfer samples were computed once and cached."


def _details(
    cfg: DistillConfig,
    plan: StudentPlan,
    sizes: dict[str, Any],
    transfer: Split,
    teacher: Teacher,
    distilled: TrainResult,
) -> dict[str, Any]:
    return {
        "student": {"model": plan.model, "model_args": plan.model_args, **sizes},
        "temperature": cfg.temperature,
        "alpha": cfg.alpha if transfer.y is not None else 1.0,
        "data": cfg.data,
        "labelled": transfer.y is not None,
        "transfer_samples": len(transfer),
        "augment": cfg.augment.model_dump(),
        "features": [list(p) for p in cfg.features],
        "teacher_cached": teacher.cached,
        "teacher_samples_run": teacher.samples_run,
        "epochs_run": distilled.stopped_epoch,
    }


def _report(
    ctx: StageContext,
    teacher: Model,
    distilled: Model,
    scratch_net: nn.Module | None,
    cfg: DistillConfig,
    metric: Metric,
    notes: list[str],
    details: dict[str, Any],
    distilled_train: TrainResult,
    scratch_train: TrainResult | None,
) -> list[Plot]:
    """Measure teacher, scratch student and distilled student on the test split, side by side."""
    rows: list[tuple[str, Model]] = [("teacher", Model(torch=teacher.torch))]
    if scratch_net is not None:
        rows.append(("student from scratch", Model(torch=scratch_net.eval())))
    rows.append(("distilled student", distilled))
    table = []
    for label, m in rows:
        ctx.log(f"measuring the {label}")
        meas = ctx.measure(m, split="test")
        table.append(
            {
                "model": label,
                "metric": meas.metric,
                "latency_ms_p50_batch1": meas.p50(),
                "size_bytes": meas.size_bytes,
                "params": meas.params,
            }
        )
    details["comparison"] = {"split": "test", "metric": metric.name, "rows": table}
    by = {r["model"]: r for r in table}
    t, d = by["teacher"], by["distilled student"]
    gap = metric.drop(t["metric"], d["metric"])
    line = (
        f"On the test split, {metric.name}: teacher {t['metric']:.4f}, distilled student {d['metric']:.4f} "
        f"({'below' if gap > 0 else 'above'} the teacher by {abs(gap):.4f})"
    )
    if "student from scratch" in by:
        s = by["student from scratch"]
        gain = metric.drop(s["metric"], d["metric"]) * -1
        line += f"; the same student trained from scratch for the same epochs scored {s['metric']:.4f} (distillation {'gained' if gain >= 0 else 'lost'} {abs(gain):.4f})"
        details["gain_over_scratch"] = gain
    notes.append(line + ".")
    speed = t["latency_ms_p50_batch1"] / max(d["latency_ms_p50_batch1"], 1e-9)
    notes.append(
        f"Batch-1 latency {d['latency_ms_p50_batch1']:.3f} ms vs the teacher's {t['latency_ms_p50_batch1']:.3f} ms "
        f"({times(speed, 'faster', 'slower')}); {d['size_bytes']:,} bytes vs {t['size_bytes']:,} on disk."
    )
    if metric.loss == "mse":
        notes.append(
            "Regression task: the soft loss is the MSE to the teacher's outputs; the temperature does not apply."
        )
    if cfg.data != "train":
        notes.append(
            f"Transfer data {cfg.data}: no labels, so the teacher's outputs were the only targets (alpha 1)."
        )
    labels = [r["model"] for r in table]
    plots = [
        Plot(
            title=f"Teacher vs students ({metric.name}, test split)",
            kind="bar",
            series={metric.name: (labels, [r["metric"] for r in table])},
            ylabel=metric.name,
            zoom=True,
        ),
        Plot(
            title="Batch-1 latency (ONNX Runtime, ms)",
            kind="bar",
            series={"p50 ms": (labels, [r["latency_ms_p50_batch1"] for r in table])},
            ylabel="ms",
        ),
    ]
    curves = {"distilled": distilled_train}
    if scratch_train is not None:
        curves["from scratch"] = scratch_train
    plots.append(
        Plot(
            title=f"Validation {metric.name} per epoch",
            kind="line",
            series={
                k: ([h["epoch"] for h in r.history], [h["val_metric"] for h in r.history])
                for k, r in curves.items()
            },
            xlabel="epoch",
            ylabel=metric.name,
        )
    )
    return plots
