"""The stage plug-in point: a small ABC, a registry by name, and what the pipeline gives a stage.

A stage turns the previous accepted :class:`~leanml.models.Model` into a new one. The pipeline then
exports the new model, measures it with the same harness as the baseline, and accepts it or rolls it
back against ``constraints.max_metric_drop``. Stages never measure or report themselves: they call
the :class:`StageContext` the pipeline hands them, so every figure comes from one harness.

Call order, for each stage of a recipe:
    1. ``Stage(config)`` when the recipe is validated (``config`` is the stage's pydantic model).
    2. ``check(task)`` and ``check_recipe(recipe, index)`` before the baseline is built (optional).
    3. ``check_model(model, task)`` with the built, untrained baseline, before anything trains or
       is written, for stages whose input still has the baseline's layers (optional).
    4. ``apply(model, ctx)`` with the previous accepted model; returns a :class:`StageResult`.

Planning (``leanml optimize``, ``stages: auto``), for a stage with a ``plan_order``: with the trained
baseline, before the search, ``plan_choices(task, model, epochs=..., objective=...)`` gives the
settings a plan may use; each is checked with steps 1-3 above, and ``plan_outcome`` tells apart
settings that build the same model. Register a stage with both and it is planned, in its order.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from ..charts import Plot
from ..constraints import Constraints
from ..data import Split
from ..errors import InvalidInputError
from ..measure import Measurement
from ..models import Model
from ..search import Choice
from ..task import Task
from ..training import EpochCallback, LossFn, TrainConfig, TrainResult


class StageConfig(BaseModel):
    """Base of every stage's recipe keys: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StageResult:
    """What a stage returns to the pipeline.

    Attributes:
        model: the new model. If ``model.onnx`` is set and ``model.torch`` is None, that file is
            the artifact (e.g. a quantized graph); otherwise the pipeline exports the model.
        notes: plain-language findings for the report (what was removed, what stayed float, why).
        details: stage-specific facts for metrics.json (e.g. ``selected_features``, per-layer
            sparsity, trials); JSON-serialisable.
        plots: charts for the report.
        train_config: a changed training config for later stages (a tune stage's best settings).
        train_result: training history, when the stage trained.
        stage_overrides: settings for later stages, by their index in ``recipe["stages"]``
            (a tune stage that searched ``stages[2].prune.amount`` sets ``{2: {"amount": 0.4}}``);
            applied only when this stage is accepted.
    """

    model: Model
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    plots: list[Plot] = field(default_factory=list)
    train_config: TrainConfig | None = None
    train_result: TrainResult | None = None
    stage_overrides: dict[int, dict[str, Any]] = field(default_factory=dict)


class Step(Protocol):
    """A long step in progress, from :meth:`StageContext.progress`: a bar in a terminal, a line per
    call in the stage's ``log.txt``, nothing in a quiet run."""

    def advance(self, k: int = 1, info: str = "") -> None:
        """``k`` more of the step's ``total`` are done; ``info`` says about what (a layer, its drop)."""
        ...

    def update(self, info: str) -> None:
        """Say what the step is doing now (``latency batch 8``) without advancing it."""
        ...


class StageContext(Protocol):
    """What the pipeline gives a stage (implemented by ``leanml.pipeline``).

    Attributes:
        task: data, metric, model factory.
        train_config: the recipe's ``train:`` section (as changed by earlier stages).
        seed: the run's seed.
        work_dir: the stage's folder in the run directory (``stages/NN-name``).
        constraints: the run's constraints; ``constraints.allows(drop)`` says whether a metric drop
            (vs the baseline, on the split the stage chose on) is within ``max_metric_drop``.
        baseline_val_metric: the baseline's metric on the validation split (for stage decisions).
        recipe: the whole recipe as a plain dict (defaults filled in).
        stage_index: this stage's index in ``recipe["stages"]``.
    """

    task: Task
    train_config: TrainConfig
    seed: int
    work_dir: Path
    constraints: Constraints
    baseline_val_metric: float
    recipe: dict[str, Any]
    stage_index: int

    def fit(
        self,
        net: Any,
        overrides: dict[str, Any] | None = None,
        *,
        train: Split | None = None,
        loss_fn: LossFn | None = None,
        extra_parameters: Any = (),
        callbacks: list[EpochCallback] | None = None,
        description: str = "fine-tune",
    ) -> TrainResult:
        """Train ``net`` in place with the shared trainer (``train_config`` merged with ``overrides``)."""
        ...

    def evaluate(self, model: Model | Path, split: str = "val") -> float:
        """The task metric of the model's ONNX artifact in ONNX Runtime on ``split`` (val/test/train)."""
        ...

    def export_onnx(self, model: Model, path: Path) -> Path:
        """Write the model as a checked ONNX file at ``path``."""
        ...

    @property
    def max_metric_drop(self) -> float:
        """``constraints.max_metric_drop``: the run's budget, absolute, in the metric's units."""
        ...

    def measure(self, model: Model | Path, split: str = "val") -> Measurement:
        """A full measurement of the model's artifact, with the run's settings."""
        ...

    def log(self, message: str) -> None:
        """Show a progress line to the user (quiet runs drop it)."""
        ...

    def progress(self, description: str, total: int | None = None) -> AbstractContextManager[Step]:
        """A progress bar for a step that may take more than a second, shown while the ``with``
        block runs: ``k of total`` when ``total`` is known (one advance per layer), else a pulse
        with the elapsed time (calibration, a measurement). The terminal shows the bar only; the
        stage's ``log.txt`` gets its start, each advance or update, and its end.

        Example:
            >>> with ctx.progress("sensitivity", len(layers)) as step:  # doctest: +SKIP
            ...     for name in layers:
            ...         step.advance(info=f"{name} drop {measure(name):+.4f}")
        """
        ...

    def apply_stages(
        self,
        model: Model,
        stages: Sequence[tuple[int, Stage]],
        *,
        work_dir: Path,
        train: dict[str, Any] | None = None,
    ) -> list[StageResult]:
        """Apply later stages (``(index in recipe["stages"], stage)``) to ``model`` in order, as a run
        would, without measuring or accepting them; for a stage that scores what later stages make of
        its candidates (a tune trial). Each stage gets a context of its own: its index, the folder
        ``work_dir/stage<index>``, and ``train_config`` merged with ``train``. Returns their results."""
        ...


C = TypeVar("C", bound=StageConfig)


class Stage(ABC, Generic[C]):
    """A pipeline stage. Subclasses set ``kind`` and ``Config`` and implement ``apply``;
    ``class PruneStage(Stage[PruneConfig])`` types ``self.config``.

    Attributes:
        kind: the registry name, the recipe key (``- prune: {...}``).
        Config: the pydantic model of the stage's recipe keys.
        forms: the model forms the stage accepts (``torch``, ``onnx``, ``sklearn``).
        keeps_layers: the stage's output keeps its input's layer names (pruning, quantization),
            so ``check_model`` of a later stage can still check names against the baseline.
        contract_example / contract_task: what the registry-wide contract tests run.
        plan_order: where plans put the stage (lower first); None: never planned.
        nothing_to_plan: why nothing was planned when ``plan_choices`` gives no setting (and no
            setting was refused by the stage's own checks, which say why themselves).
    """

    kind: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    forms: ClassVar[tuple[str, ...]] = ("torch",)
    keeps_layers: ClassVar[bool] = False
    # A small configuration and task (recipe ``task:`` keys) the registry-wide contract tests run
    # this stage on (tests/techniques/test_stage_contract.py): register a stage and it is tested.
    contract_example: ClassVar[dict[str, Any] | None] = None
    contract_task: ClassVar[dict[str, Any]] = {
        "data": "digits",
        "model": "cnn",
        "model_args": {"width": 8, "depth": 1},
    }
    plan_order: ClassVar[int | None] = None
    nothing_to_plan: ClassVar[str] = "no setting applies"

    def __init__(self, config: C) -> None:
        self.config: C = config

    def check(self, task: Task) -> None:
        """Called before the baseline trains; raise InvalidInputError for input the stage cannot take."""

    def check_recipe(self, recipe: dict[str, Any], index: int) -> None:
        """Called before the baseline trains with the whole recipe (defaults filled in) and this
        stage's index in ``stages``: for settings that refer to other parts of the recipe."""

    def check_model(self, model: Model, task: Task) -> None:
        """Called with the built baseline before it trains (step 3 of the call order): for settings
        that name parts of the model (layer names, a student's factory), so a typo fails before
        minutes of training. The model must not be changed."""

    def check_form(self, model: Model) -> None:
        """Raise a clear error when the model's form is one this stage cannot work on."""
        if model.form not in self.forms:
            what = {
                "onnx": "an ONNX-only model (there is no PyTorch model to change)",
                "sklearn": "a scikit-learn model",
                "torch": "a PyTorch model",
            }[model.form]
            raise InvalidInputError(
                f"stage {self.kind!r} does not apply to {what}; it works on {', '.join(self.forms)} models"
            )

    @abstractmethod
    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        """Produce the new model from the previous accepted ``model`` (never change it in place)."""

    @classmethod
    def plan_choices(cls, task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
        """The settings a plan may use for the trained ``model`` on ``task``, the documented default
        first (seed plans try it alone), the strongest marked ``strong``; none (the default): the
        stage has nothing to plan for this model, ``nothing_to_plan`` says why.

        Args:
            epochs: the recipe's ``train.epochs``, to size the training a setting does.
            objective: what the search minimises, ``latency`` or ``size``.
        """
        return []

    @classmethod
    def plan_outcome(cls, config: dict[str, Any], task: Task, model: Model) -> str:
        """What the setting ``config`` builds from ``model``, so that two settings which build the
        same model are planned once (default: the settings themselves)."""
        return json.dumps(config, sort_keys=True)


_STAGES: dict[str, type[Stage[Any]]] = {}
S = TypeVar("S", bound=type[Stage[Any]])


def register_stage(kind: str) -> Callable[[S], S]:
    """Class decorator: register a Stage subclass under ``kind``."""

    def deco(cls: S) -> S:
        if kind in _STAGES and _STAGES[kind] is not cls:
            raise ValueError(f"stage kind {kind!r} is registered twice")
        cls.kind = kind
        _STAGES[kind] = cls
        return cls

    return deco


def unregister_stage(kind: str) -> None:
    """Remove a stage kind (for tests that register their own)."""
    _STAGES.pop(kind, None)


def stage_kinds() -> list[str]:
    return sorted(_STAGES)


def get_stage_class(kind: str, *, where: str = "stage") -> type[Stage[Any]]:
    try:
        return _STAGES[kind]
    except KeyError:
        raise InvalidInputError(
            f"{where}: unknown stage kind {kind!r}; known kinds: {', '.join(stage_kinds()) or '(none)'}"
        ) from None
