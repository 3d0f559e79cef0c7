"""The ``prune`` stage: unstructured, N:M, neuron, channel and layer pruning.

Structured kinds (``neuron``, ``channel``, ``layer``) physically remove units, channels or blocks: the
model has fewer parameters and FLOPs and exports to a smaller ONNX graph. Sparse kinds (``unstructured``,
``n_m``) leave dense tensors holding zeros: the file compresses better, but dense runtimes do not get
faster, and the notes say so.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from torch import nn

from ...charts import Plot
from ...errors import InvalidInputError, StageNotApplicable
from ...models import Model, is_keras_module
from ...search import Choice
from ...task import Task
from .._base import Stage, StageContext, StageResult, register_stage
from . import _plan
from ._common import (
    CONV_TYPES,
    check_runs,
    count_flops,
    describe_layers,
    named_layers,
    per_layer_table,
    sample_input,
    snapshot,
)
from ._config import PruneConfig
from ._runs import Outcome, run_layers, run_sparse, run_width, shrink_note, size_notes
from ._schedule import polynomial_schedule
from ._sensitivity import Sensitivity
from ._structured import droppable_blocks


@register_stage("prune")
class PruneStage(Stage[PruneConfig]):
    """Prune a PyTorch model (see the module docstring); ``PruneConfig`` holds the recipe keys."""

    Config = PruneConfig
    keeps_layers = True
    forms: ClassVar[tuple[str, ...]] = ("torch",)
    contract_example: ClassVar[dict[str, Any] | None] = {
        "kind": "channel",
        "amount": 0.5,
        "finetune": {"epochs": 1},
        "sensitivity": {"ratios": [0.5]},
    }
    plan_order: ClassVar[int | None] = 40

    @classmethod
    def plan_choices(cls, task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
        return _plan.choices(task, model, epochs=epochs, objective=objective)

    @property
    def cfg(self) -> PruneConfig:
        return self.config

    # -- checks before any training -------------------------------------------------------------

    def check(self, task: Task) -> None:
        if task.model_kind in ("onnx", "sklearn"):
            what = "an ONNX file" if task.model_kind == "onnx" else "a scikit-learn estimator"
            raise InvalidInputError(
                f"prune needs the PyTorch model; task.model {task.model!r} is {what}, whose layers cannot "
                "be removed or fine-tuned; give a zoo model name or a 'pkg.mod:function' that builds an nn.Module"
            )

    def check_model(self, model: Model, task: Task) -> None:
        if model.torch is not None and not is_keras_module(model.torch):
            check_applicable(model.torch, self.cfg.kind, sample_input(task.data.train))

    def check_form(self, model: Model) -> None:
        if is_keras_module(model.torch):
            raise StageNotApplicable(
                "stage 'prune' does not apply to a Keras model: Torch-Pruning's dependency graph does "
                "not know Keras layers, so it cannot tell which channels or weights to remove; put a "
                "distill stage before it to prune a PyTorch student instead"
            )
        if model.torch is None:
            what = "an ONNX-only model" if model.form == "onnx" else "a scikit-learn model"
            raise InvalidInputError(
                f"stage 'prune' does not apply to {what}: prune needs the PyTorch model, whose layers it "
                "removes and fine-tunes; prune before quantizing, or give the nn.Module"
            )

    # -- the stage ------------------------------------------------------------------------------

    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        cfg = self.cfg
        net = model.torch
        assert net is not None
        task = ctx.task
        sample = sample_input(task.data.train)
        check_applicable(net, cfg.kind, sample)
        sparse = cfg.kind in ("unstructured", "n_m")
        original = copy.deepcopy(net) if sparse else None  # for the compressed-size comparison
        before = snapshot(net)
        params_before = sum(p.numel() for p in net.parameters())
        flops_before = count_flops(net, task.data.train.x)
        fractions = polynomial_schedule(1.0, cfg.schedule.steps, cfg.schedule.power)

        if sparse:
            out = run_sparse(net, cfg, ctx, fractions)
        elif cfg.kind in ("neuron", "channel"):
            out = run_width(net, cfg, ctx, sample, fractions)
        else:
            out = run_layers(net, cfg, ctx, sample, fractions)
        check_runs(net, sample, what=f"prune.kind {cfg.kind!r}")
        net.eval()

        params_after = sum(p.numel() for p in net.parameters())
        flops_after = count_flops(net, task.data.train.x)
        details: dict[str, Any] = {
            "prune_kind": cfg.kind,
            "amount": cfg.amount,
            "importance": cfg.importance,
            "scope": cfg.scope,
            "schedule": {
                "steps": cfg.schedule.steps,
                "power": cfg.schedule.power,
                "history": out.history,
            },
            "params_before": params_before,
            "params_after": params_after,
            "flops_before": flops_before,
            "flops_after": flops_after,
            "per_layer_sparsity": out.table
            if out.table is not None
            else per_layer_table(before, net),
            **out.details,
        }
        if out.sensitivity is not None:
            details["sensitivity"] = out.sensitivity.as_dict()
        notes = list(out.notes)
        if original is not None:
            notes += size_notes(original, net, ctx, details)
        else:
            notes.append(shrink_note(params_before, params_after, flops_before, flops_after))
        if out.sensitivity is not None:
            notes.append(_sensitivity_note(out.sensitivity, cfg.kind))
        plots = _plots(details, out, task.metric.name, cfg.kind)
        info = {**model.info, "prune": {"kind": cfg.kind, "amount": cfg.amount}}
        new = Model(torch=net, model_args=dict(model.model_args), factory=model.factory, info=info)
        return StageResult(
            new, notes=notes, details=details, plots=plots, train_result=out.train_result
        )


# -- what a kind needs ---------------------------------------------------------------------------


def check_applicable(net: nn.Module, kind: str, sample: Any) -> None:
    """Raise one line when the model has no layers this kind can prune (naming what it has)."""
    linears = named_layers(net, (nn.Linear,))
    convs = [(n, m) for n, m in named_layers(net, CONV_TYPES) if m.groups == 1]
    if kind == "channel" and not convs:
        raise InvalidInputError(
            f"prune.kind 'channel' removes Conv filters; the model has {describe_layers(net)}; "
            "use kind 'neuron' for Linear layers (or 'unstructured')"
        )
    if kind == "neuron" and len(linears) < 2:
        raise InvalidInputError(
            f"prune.kind 'neuron' removes hidden units of Linear layers (the output layer keeps its units); "
            f"the model has {describe_layers(net)}; use kind 'channel' for Conv layers (or 'unstructured')"
        )
    if kind in ("unstructured", "n_m") and not named_layers(net):
        raise InvalidInputError(
            f"prune.kind {kind!r} sparsifies Linear/Conv weights; the model has none ({type(net).__name__})"
        )
    if kind == "layer" and not droppable_blocks(net, sample):
        raise InvalidInputError(
            "prune.kind 'layer' drops whole blocks whose output has the shape of their input (residual "
            f"blocks, encoder layers) in an nn.Sequential or nn.ModuleList; the model ({type(net).__name__}, "
            f"{describe_layers(net)}) has none; use kind 'neuron', 'channel' or 'unstructured'"
        )


# -- report pieces -------------------------------------------------------------------------------


def _sensitivity_note(s: Sensitivity, kind: str) -> str:
    order = s.most_sensitive()
    if not order:
        return "Sensitivity analysis: no layer was probed."

    def worst(n: str) -> str:
        return f"{n} ({max(s.curves[n][1]):+.3f})"

    most = ", ".join(worst(n) for n in order[:3])
    least = ", ".join(worst(n) for n in order[3:][-2:])
    text = (
        f"Sensitivity (each layer pruned alone, metric drop on the validation split in PyTorch): most sensitive "
        f"{most}"
    )
    text += f"; least {least}." if least else "."
    if s.skipped:
        text += f" {len(s.skipped)} layers beyond sensitivity.max_layers were not probed."
    return text


def _layer_bars(rows: list[dict[str, Any]], kind: str) -> Plot:
    """Per-layer bars that say what the notes say. Channel and neuron pruning count removed output
    channels (units); a layer whose inputs and outputs were both halved keeps a quarter of its
    weights (sparsity 0.75), so the weight fraction is a second, separately labelled series."""
    names = [r["layer"] for r in rows]
    weights = [float(r["sparsity"]) for r in rows]
    if kind not in ("channel", "neuron"):
        return Plot(
            title="Per-layer sparsity (fraction of each layer's weights removed or zero)",
            kind="bar",
            series={"weights removed or zero": (names, weights)},
            xlabel="layer",
            ylabel="fraction of the layer's weights",
        )
    unit = "units" if kind == "neuron" else "channels"
    outputs = [
        1.0
        if r["shape_after"] is None
        else 1.0 - r["shape_after"][0] / max(r["shape_before"][0], 1)
        for r in rows
    ]
    return Plot(
        title=f"Per-layer pruning: output {unit} removed (as in the notes) and weights removed",
        kind="bar",
        series={
            f"output {unit} removed": (names, outputs),
            f"weights removed (input and output {unit} together)": (names, weights),
        },
        xlabel="layer",
        ylabel="fraction removed",
    )


def _plots(details: dict[str, Any], out: Outcome, metric: str, kind: str) -> list[Plot]:
    plots: list[Plot] = []
    if out.sensitivity is not None and out.sensitivity.curves:
        plots.append(out.sensitivity.plot(metric, kind))
    rows = details["per_layer_sparsity"]
    if rows:
        plots.append(_layer_bars(rows, kind))
    if len(out.history) > 1:
        steps = [h["step"] for h in out.history]
        plots.append(
            Plot(
                title="Gradual pruning: sparsity and validation metric after each step",
                kind="line",
                series={
                    "target sparsity": (steps, [h["target"] for h in out.history]),
                    "achieved sparsity": (steps, [h["achieved"] for h in out.history]),
                    f"val {metric}": (steps, [h["val_metric"] for h in out.history]),
                },
                xlabel="step",
                ylabel="fraction",
            )
        )
    return plots
